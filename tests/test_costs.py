"""What a cell's attempt cost (``pipeline.costs.CostMeter``), on a clock the test sets: the steady
epoch, the fixed warm-up (the first epoch's whole span less a steady one), evaluation per 1,000
events, tracking per epoch. The forecast extrapolates these (tests/test_forecast.py)."""

from __future__ import annotations

import pytest

from thesis_mlflow.pipeline import costs


def test_a_meter_separates_the_steady_epoch_from_the_fixed_costs(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(costs.time, "perf_counter", lambda: now[0])
    m = costs.CostMeter()
    now[0] = 10.0
    m.fitting()  # inputs built in 10 s
    for t, rate in ((30.0, 100.0), (42.0, 125.0), (54.0, 125.0)):  # epoch 1 (with compile), 2, 3: 1,000 events each
        now[0] = t
        m.epoch(1000, rate, 64)
        with m.tracking(calls=2):
            now[0] += 0.5
    now[0] = 55.0
    with m.evaluating(2000):
        now[0] = 57.0
    now[0] = 60.0
    out = m.metrics()
    assert out["cost.wall_s"] == 60.0 and out["cost.setup_s"] == 10.0
    assert out["cost.epoch_train_s"] == 8.0 and out["cost.steps_per_epoch"] == 16  # ceil(1000 / 64)
    # the first epoch was logged 20 s after training started; a steady epoch takes (54 - 30) / 2 = 12 s,
    # so 8 s were fixed (building, compiling and capturing the step, the first epoch's warm-up)
    assert out["cost.warmup_s"] == pytest.approx(8.0)
    assert out["cost.eval_s_per_1k"] == pytest.approx(1.0)
    assert out["cost.tracking_s_per_epoch"] == pytest.approx(0.5) and out["cost.tracking_calls_per_epoch"] == 2
    assert out["cost.peak_rss_mb"] > 10 and all(k.startswith("cost.") for k in out)


def test_one_epoch_has_no_steady_pace_to_subtract_and_no_warmup(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(costs.time, "perf_counter", lambda: now[0])
    m = costs.CostMeter()
    m.fitting()
    now[0] = 5.0
    m.epoch(640, 128.0, 64)
    out = m.metrics()
    assert out["cost.warmup_s"] == 0.0 and out["cost.epoch_train_s"] == 5.0 and "cost.eval_s_per_1k" not in out
