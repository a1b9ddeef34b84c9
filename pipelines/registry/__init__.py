"""The MLflow model registry, shared by the training stages and generation: models.py logs a model
directory as a pyfunc model, registers versions, resolves aliases and runs the champion gate;
pyfunc.py is the model's serving code (logged as code with every version)."""
