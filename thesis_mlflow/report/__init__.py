"""The PhD summary and the query API: tables from MLflow, statistics over seeds, figures and
the written answer. May import everything below it (``grid``'s run lookup, ``tracking``,
``learn``'s metrics, ``spec``, ``secret``); nothing imports ``report`` but ``steps/``.

- ``results``: the study as tables for notebooks (programmatic MLflow queries)
- ``testnoise``: the test-set part of each interval (DeLong's covariance; the paired bootstrap)
- ``stats``: seed-aware intervals, contrasts, Holm families, the omnibus model (no MLflow)
- ``equivalence``: "as good as" within a margin (TOST) and one verdict per pair
- ``curves``: rejection curves, score densities, calibration over seeds
- ``tables``: the effects, per-cell, tokenizer and background tables; the overtraining check
- ``answer``: the answer in words (ranking, verdicts against the margin, detectable sizes, caveats)
- ``charts``: the page's plotly figures (the forest against the margin first)
- ``documents``: the ``Report`` as the HTML page, CSV and TeX
- ``figures``: the main figures as vector PDF
- ``palette``: one colour per tokenizer for every figure, page and PDF (and palettes that never reuse one)
- ``build``: the ``report`` step (queries -> tables -> answer, charts -> documents -> artifacts)

Public API: ``run_report``, ``grid_runs``, ``cell_table``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"run_report": "build", "grid_runs": "results", "cell_table": "results"})
