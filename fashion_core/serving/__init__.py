"""Serving and prediction: ``predict`` (a logged model on photos and fields), ``pyfunc_model`` (the MLflow pyfunc)."""
