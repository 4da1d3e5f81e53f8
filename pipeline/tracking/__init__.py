"""Experiment tracking in MLflow: optional, off unless MLFLOW_TRACKING_URI is set; S3 and the
signed artefacts stay the source of truth (docs/governance.md)."""
