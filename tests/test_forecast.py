"""The forecast's arithmetic on known measurements (``forecast.arithmetic``): times, packs,
requeues under a time limit, memory against the request, disk, and which quantities are
extrapolated. Planted misfits (a memory request below the peak, a limit shorter than one epoch, a
limit that needs requeues) are each seen to be caught, with the pack named."""

from __future__ import annotations

import pytest

from thesis_mlflow.forecast import page
from thesis_mlflow.forecast.arithmetic import (
    EARLY_WARNING_S,
    CellCost,
    FullSize,
    Limits,
    Upstream,
    _Unit,
    attempts,
    cell_forecast,
    forecast,
    prepare_s,
)


def _cost(cell="a", pack=0, stack=None, **kw) -> CellCost:
    base = dict(setup_s=10.0, warmup_s=5.0, epoch_train_s=2.0, steps_per_epoch=20, eval_s_per_1k=0.5, tracking_s_per_epoch=0.3,
                tracking_calls_per_epoch=3.0, peak_rss_mb=1000.0, train_mb_per_1k=0.2, checkpoint_mb=5.0, scores_mb=0.1, log_mb=0.01,
                n_train=1280, n_eval=2000, epochs=2)
    return CellCost(cell=cell, pack=pack, stack=stack or cell, **{**base, **kw})


FULL = FullSize(n_train=240_000, n_val=30_000, n_test=30_000, epochs=50, batch_size=64)


def test_a_cell_is_its_steady_step_times_the_full_steps_plus_evaluation_and_fixed_costs():
    f = cell_forecast(_cost(), FULL)
    step = 2.0 / 20
    epoch = 3750 * step + 30_000 * 0.5 / 1000 + 0.3  # ceil(240000/64) = 3750 steps
    assert f.step_s == pytest.approx(step) and f.epoch_s == pytest.approx(epoch)
    final = (240_000 + 30_000) * 0.5 / 1000
    assert f.final_s == pytest.approx(final)
    assert f.cell_s == pytest.approx(10 + 5 + 50 * epoch + final)
    # data beyond the rehearsal's: training events and both evaluation splits, at the measured MB per 1,000
    assert f.data_mb == pytest.approx(((240_000 - 1280) + 2 * (30_000 - 2000)) * 0.2 / 1000)
    # checkpoint as measured, scores per test event, log per epoch
    assert f.disk_mb == pytest.approx(5.0 + 0.1 * 30_000 / 2000 + 0.01 * 50 / 2)
    assert f.calls_per_min == pytest.approx(3.0 / (epoch / 60))


def test_packs_one_after_another_add_up_and_side_by_side_take_the_slowest():
    costs = [_cost("a", 0), _cost("b", 0, epoch_train_s=4.0), _cost("c", 1)]
    seq = forecast(costs, dict.fromkeys("abc", FULL), Limits("local"))
    a, b = (cell_forecast(c, FULL) for c in costs[:2])
    assert seq.packs[0].wall_s == pytest.approx(a.cell_s + b.cell_s)
    assert seq.wall_s == pytest.approx(seq.packs[0].wall_s)  # the longest pack, all at once
    assert seq.node_hours == pytest.approx(sum(p.wall_s for p in seq.packs) / 3600)
    side = forecast(costs, dict.fromkeys("abc", FULL), Limits("slurm", side_by_side=True, gpus_per_job=1))
    assert side.packs[0].wall_s == pytest.approx(max(a.cell_s, b.cell_s))
    assert side.gpu_hours == pytest.approx(side.node_hours)
    assert side.disk_mb == pytest.approx(sum(cell_forecast(c, FULL).disk_mb for c in costs))


def test_seeds_stacked_run_as_one_unit_one_after_another():
    costs = [_cost("s0", 0, stack="cfg"), _cost("s1", 0, stack="cfg"), _cost("t0", 0, stack="cfg2")]
    fc = forecast(costs, dict.fromkeys(("s0", "s1", "t0"), FULL), Limits("local"))
    one = cell_forecast(costs[0], FULL).cell_s
    assert fc.packs[0].wall_s == pytest.approx(2 * one)  # two stacks, not three cells


def test_a_memory_request_below_the_peak_fails_the_forecast_naming_the_pack():
    costs = [_cost("a", 0), _cost("b", 0), _cost("c", 1, peak_rss_mb=100.0)]
    sizes = dict.fromkeys("abc", FULL)
    ok = forecast(costs, sizes, Limits("slurm", 10**6, 300, 3, 64 * 1024, "slurm.mem", side_by_side=True))
    assert ok.exit_code == 0 and not ok.warnings
    tight = forecast(costs, sizes, Limits("slurm", 10**6, 300, 3, 1100, "slurm.mem", side_by_side=True))
    assert tight.exit_code == 1
    assert [p.fatal for p in tight.packs] == [True, False]
    assert tight.warnings and tight.warnings[0].startswith("pack 0: 2 cells need") and "slurm.mem" in tight.warnings[0]
    assert "WARNING: pack 0" in page.text(tight).splitlines()[0]  # warnings first


def test_a_time_limit_shorter_than_one_epoch_means_the_pack_never_finishes():
    c = _cost()
    epoch = cell_forecast(c, FULL).epoch_s  # ~390 s
    limit = int(epoch + 300 + EARLY_WARNING_S + c.setup_s + c.warmup_s) - 30  # setup, then not one whole epoch before the warning
    fc = forecast([c], {"a": FULL}, Limits("slurm", limit, 300, 3, None))
    assert fc.exit_code == 1 and fc.packs[0].attempts is None
    assert "pack 0: one epoch takes" in fc.warnings[0] and "never finish" in fc.warnings[0]
    assert "never finishes" in page.table(page.pack_rows(fc))
    nothing = forecast([c], {"a": FULL}, Limits("slurm", 200, 300, 3, None))  # the warning is due before the job starts
    assert nothing.exit_code == 1 and "leaves nothing to train" in nothing.warnings[0]


def test_a_time_limit_that_needs_requeues_warns_and_exits_0_unless_past_max_requeues():
    c = _cost()
    f = cell_forecast(c, FULL)
    usable = 4 * 3600 - 300 - EARLY_WARNING_S
    per_attempt = int((usable - c.setup_s - c.warmup_s) // f.epoch_s)  # whole epochs an attempt keeps
    need = -(-50 // per_attempt)
    fc = forecast([c], {"a": FULL}, Limits("slurm", 4 * 3600, 300, need, None))
    p = fc.packs[0]
    assert p.attempts == need and p.requeues == need - 1 and fc.exit_code == 0
    assert fc.warnings == [f"pack 0 needs {page.hms(p.wall_s)}: with time 4:00:00 it will be requeued {need - 1} time{'s' * (need > 2)}"]
    assert p.wall_s == pytest.approx(f.cell_s + (need - 1) * (c.setup_s + c.warmup_s))  # each attempt sets up again
    few = forecast([c], {"a": FULL}, Limits("slurm", 4 * 3600, 300, need - 2, None))
    assert few.exit_code == 1 and "more than max_requeues" in few.warnings[0]
    roomy = forecast([c], {"a": FULL}, Limits("slurm", 48 * 3600, 300, 3, None))
    assert roomy.packs[0].attempts == 1 and not roomy.warnings


def test_attempts_keep_whole_epochs_and_pay_setup_each_time():
    u = _Unit(setup_s=10, epoch_s=30, epochs=4, final_s=5)
    assert attempts([u], None) == 1
    assert attempts([u], 10 + 4 * 30 + 5) == 1
    assert attempts([u], 10 + 4 * 30 + 4) == 2  # the final evaluation does not fit: again, for it alone
    assert attempts([u], 10 + 2 * 30) == 3  # 2 epochs, 2 epochs, then the final evaluation alone
    assert attempts([u], 10 + 2 * 30 + 5) == 2
    assert attempts([u], 10 + 29) is None
    # one after another: the second unit starts in the attempt the first ended in
    assert attempts([u, u], 2 * (10 + 4 * 30 + 5)) == 1
    assert attempts([u, u], 10 + 4 * 30 + 5 + 10 + 29) == 2


def test_every_quantity_says_how_it_was_had():
    fc = forecast([_cost()], {"a": FULL}, Limits("local"))
    text = page.text(fc)
    for k in ("step time", "evaluation", "memory", "checkpoint", "score files", "logs"):
        assert k in fc.extrapolated
    assert "score files: extrapolated per test event" in text and "checkpoint: measured" in text
    html = page.html_page(fc, "g")
    assert "How each number was had" in html and "<table>" in html
    rows = page.csv_text(page.cell_rows(fc)).splitlines()
    assert rows[0].startswith("cell,pack,step_ms") and len(rows) == 2


def test_the_inputs_part_of_the_setup_grows_with_the_events():
    c = _cost(inputs_s_per_1k=2.0)
    f, f0 = cell_forecast(c, FULL), cell_forecast(_cost(), FULL)
    more = (240_000 + 30_000 + 30_000) - (1280 + 2 * 2000)  # every split at full size, against the rehearsal's
    assert f.cell_s - f0.cell_s == pytest.approx(more * 2.0 / 1000)


def test_the_prepare_job_runs_two_at_a_time_and_cannot_outlast_an_attempt():
    """Binning as measured; a VQ-VAE's training scaled to the full pre-training; two at a time
    (longest first); longer than an attempt: exit 1, said first (it has no checkpoint to resume)."""
    vq = Upstream("vqvae-v4-k512", wall_s=30.0, train_s=10.0, scale=100.0)  # 20 s reading + 10 s x 100
    assert vq.full_s == pytest.approx(1020.0)
    ups = [Upstream("binning-v4", 5.0), Upstream("binning-v5", 6.0), vq, Upstream("vqvae-v5-k512", 30.0, 10.0, 100.0)]
    assert prepare_s(ups) == pytest.approx(1020.0 + 6.0)  # the two VQ-VAEs side by side, a binning after each
    c = _cost()
    ok = forecast([c], {"a": FULL}, Limits("slurm", 48 * 3600, 300, 3, None), ups)
    assert ok.prepare_s == pytest.approx(1026.0) and ok.exit_code == 0 and "prepare job (binning, VQ-VAE pre-training) 0:17:06" in page.text(ok)
    short = forecast([c], {"a": FULL}, Limits("slurm", 1200, 100, 100, None), ups)  # usable 1200 - 100 - 60 = 1040 s
    assert short.exit_code == 0
    tight = forecast([c], {"a": FULL}, Limits("slurm", 1150, 100, 100, None), ups)  # usable 990 s < 1026 s
    assert tight.exit_code == 1 and tight.warnings[0].startswith("the prepare job needs 0:17:06")
