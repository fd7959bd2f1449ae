"""Entry points: one thin click command per MLproject entry point (parse -> library -> log).

``python -m steps.<name>`` is what MLproject, the grid driver and cluster jobs run;
``thesis-mlflow <name>`` (``steps.cli``) is the same command under one console script.
"""

from thesis_mlflow.tracking.telemetry import telemetry_off

telemetry_off()  # before any step imports MLflow
