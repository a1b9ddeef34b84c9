"""Lineage: what a registered model was trained on, read back from the stages' manifests and indexes.

chain.py follows a model version (or model directory) to its MLflow run, shards, tokenizer, corpus
versions (refresh parents included) and input files; documents.py follows one input record to its
corpus row and its shard tokens; contamination.py measures how much of the val split (and of named
evaluation sets) the training split holds, the figure the champion gate weighs.
"""
