"""The full run's cost, forecast from a rehearsal: every cell at its real sizes for a few steps,
through the backend the real run uses. May import ``grid``, ``tracking``, ``learn``, ``errors``,
``spec`` and ``paths``; never ``report`` or ``server``.

- ``arithmetic``: measured costs -> per cell and per pack times, requeues, memory, disk (pure)
- ``measured``: a rehearsal's measurements from the store; the real run's sizes and job limits
- ``page``: the forecast as a terminal table (warnings first), CSV and an HTML page
- ``rehearse``: ``grid rehearse`` and ``grid forecast``: run the rehearsal, forecast, log it

Public API: ``rehearse``, ``forecast_grid``, ``forecast``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"rehearse": "rehearse", "forecast_grid": "rehearse", "forecast": "arithmetic"})
