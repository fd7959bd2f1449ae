"""thesis-mlflow: MLflow-tracked tokenization study for four-top-quark classification."""

from thesis_mlflow.tracking.telemetry import telemetry_off

telemetry_off()

__version__ = "0.1.0"
