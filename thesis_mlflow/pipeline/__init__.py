"""The steps' work, each a function of a spec and the run ids it needs (MLflow's
multistep_workflow pattern: steps talk only through run ids and named artifacts). May import
``learn``, ``tracking``, ``errors``, ``spec`` and ``paths``; never ``grid``, ``report`` or
``server``.

- ``cell``: train one cell and log it (``train_cell(spec) -> run id``)
- ``inputs``: a cell's model inputs per tokenizer, from files and upstream runs
- ``upstream``: dataset, binning and VQ-VAE runs, made once per settings and reused
- ``compare``: the ``compare`` step (our binned tokens against a file made elsewhere)
- ``reproduce``: one cell again from its run id

Public API: ``train_cell``, ``build_inputs``, ``find_or_run``, ``reproduce``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"train_cell": "cell", "build_inputs": "inputs", "find_or_run": "upstream",
                                         "reproduce": "reproduce"})
