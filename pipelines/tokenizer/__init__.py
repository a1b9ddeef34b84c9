"""Stage `tokenizer`: the corpus -> a lossless SentencePiece model.

Reads the corpus's data/*.parquet (through core/outputs.py) and trains on a seeded sample of its
documents; writes <ws>/tokenizer/<fp12>/: spm.model, spm.vocab, the Hugging Face tokenizer files
and the manifest. Open stage.py first; hf_files.py writes the Hugging Face files.
"""
