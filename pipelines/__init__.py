"""The Ray + MLflow layer: every stage of the raw-text-to-registered-GPT-2 workflow."""

__version__ = "0.1.0"
