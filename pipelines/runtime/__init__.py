"""The two services the stages run on: Ray (ray.py: join the cluster, or start a private local one)
and MLflow (tracking.py: the tracking URI, runs, params, datasets)."""
