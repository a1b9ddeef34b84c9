"""Lineage: what a registered model was trained on, read back from the stages' manifests and indexes.

chain.py follows a model version (or model directory) to its MLflow run, shards, tokenizer, corpus
versions (refresh parents included) and input files.
"""
