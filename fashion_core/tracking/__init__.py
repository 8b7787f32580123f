"""MLflow: ``runs`` (the one place that talks to MLflow), ``versions`` (code and library versions), ``references`` (run and model references)."""
