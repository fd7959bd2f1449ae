"""The learning core: events in, scores out. MLflow-free; imports only ``errors``, ``spec``
and its own modules.

- ``data`` (the raw HDF5 format), ``synthetic`` (the built-in stand-in sample)
- ``binning`` (Ambre-style tokens), ``prebinned`` (a pre-binned file made elsewhere),
  ``vqvae`` (per-object VQ-VAE codes), ``features`` (model inputs per tokenizer)
- ``model`` (the classifier), ``training`` (the loop: ``fit``, ``evaluate``, the learning rate
  per step), ``stacked`` (the seeds of a configuration as one model), ``metrics`` (figures of
  merit), ``safeload`` (loading checkpoints without running code)

Each run's random stream, from which all its draws come, is ``spec.RunStream``.

Public API: ``fit``, ``evaluate``, ``Classifier``, ``Binning``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"fit": "training", "evaluate": "training", "Classifier": "model",
                                         "Binning": "binning"})
