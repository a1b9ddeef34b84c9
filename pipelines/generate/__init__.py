"""Stage `generate`: a registered model + prompts -> completions, with Ray Data.

Reads prompts (a file or URI, or the fine-tuning run's val prompts) and a model version from the
registry; writes Parquet under <ws>/generations/<id>/data/ and the manifest. Everything is in
stage.py.
"""
