"""Stage `finetune`: pretraining's machinery on new data (stage.py first; data.py builds the rows,
task.py is fine-tuning's Task and champion gate)."""
