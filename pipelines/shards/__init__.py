"""Stage `shards`: the corpus + the tokenizer -> memory-mappable Arrow token shards.

Reads the corpus's data/*.parquet and spm.model; writes <ws>/shards/<fp12>/: train-*.arrow and
val-*.arrow (one uint16/uint32 `tokens` column, each document followed by EOS) and the manifest
that gpt2core/data.py reads. Everything is in stage.py.
"""
