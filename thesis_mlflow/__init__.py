"""thesis-mlflow: MLflow-tracked tokenization study for four-top-quark classification."""

__version__ = "0.1.0"
