"""Stage `shards`: the corpus + the tokenizer -> memory-mappable Arrow token shards.

Reads the corpus's data/*.parquet and spm.model; writes <ws>/shards/<fp12>/: train-*.arrow and
val-*.arrow (one uint16/uint32 `tokens` column, each document followed by EOS), beside each its
document index *.docs.parquet, and the manifest that gpt2core/data.py reads. stage.py builds them,
val_split.py picks the val documents, doc_index.py writes and reads the index.
"""
