"""The seeds of one configuration trained as one stacked model (``learn.stacked``) are each that
seed trained alone (``training.fit``): same losses, weights and scores within float rounding,
with dropout on and a last, partial batch. Each per-seed element is then planted shared, and
the comparison must catch it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from thesis_mlflow.learn import features, stacked, synthetic
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.model import Classifier, ModelConfig
from thesis_mlflow.learn.training import TrainConfig, evaluate, fit
from thesis_mlflow.spec import CellSpec

SMALL = dict(tokenizer="binned", pooling="cls", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.2)
SPEC = CellSpec(tokenizer="binned", pooling="cls")
EPOCHS = 2
TOL = 1e-5


@pytest.fixture(scope="module")
def splits():
    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=500, seed=11))
    b = Binning().fit(sp["train"])
    out = {s: features.make_tensors(features.token_inputs(b.transform(sp[s]), True), sp[s].y, "4t_vs_bg") for s in ("train", "val")}
    assert len(out["train"]) % 32, "the test needs a last, partial batch"
    return out


def _cfg(seed: int, **kw) -> TrainConfig:
    base = dict(epochs=EPOCHS, batch_size=32, lr=3e-3, warmup_steps=4, device="cpu", step_mode="eager", grad_clip=0.5)
    return TrainConfig(**{**base, **kw}, seed=seed, stream_key=SPEC.stream_key())


def _model():
    return Classifier(ModelConfig(**SMALL))


@pytest.fixture(scope="module")
def alone(splits, tmp_path_factory):
    """Each seed trained alone, the reference; (model, history) per seed."""
    tmp = tmp_path_factory.mktemp("alone")
    out = []
    for s in range(3):
        m = _model()
        h = fit(m, splits["train"], splits["val"], _cfg(s), tmp / f"s{s}.pt", progress=False)
        out.append((m, h))
    return out


def _stack(splits, tmp, seeds=(0, 1, 2), resume=None, backend=None, **kw):
    members = [stacked.Member(_model(), _cfg(s), tmp / f"stack{s}.pt", resume_from=(resume or {}).get(s), **kw) for s in seeds]
    return stacked.fit_stacked(members, splits["train"], splits["val"], progress=False, compile_backend=backend)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest weight difference, the attention's key bias aside: a query sees the same shift
    q.b_k on every key, which softmax cancels, so its gradient is zero in exact arithmetic and
    rounding noise (1e-10) that Adam scales to LR-sized steps; it changes no output."""
    out = 0.0
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        d = (x - y).abs()
        if name.endswith("attn.qkv.bias"):
            d = torch.cat([d[: len(d) // 3], d[2 * len(d) // 3 :]])
        out = max(out, d.max().item())
    return out


def _agrees(member, ref, splits) -> bool:
    model, hist = ref
    if member.error is not None or len(member.history) != len(hist):
        return False
    for a, b in zip(member.history, hist, strict=True):
        if a["epoch"] != b["epoch"] or any(abs(a["metrics"][k] - b["metrics"][k]) > TOL for k in ("train_loss", "val_loss", "val_auc", "lr")):
            return False
    s1 = evaluate(member.model, splits["val"], torch.device("cpu"), 4096)["scores"]
    s2 = evaluate(model, splits["val"], torch.device("cpu"), 4096)["scores"]
    return _max_diff(member.model, model) < TOL and float(abs(s1 - s2).max()) < TOL


def test_each_stacked_seed_equals_that_seed_alone(splits, alone, tmp_path):
    members = _stack(splits, tmp_path)
    for s, m in enumerate(members):
        assert _agrees(m, alone[s], splits), f"seed {s}"
    assert _max_diff(members[0].model, members[1].model) > 1e-2  # replicates, not one model three times
    ck = torch.load(tmp_path / "stack1.pt", weights_only=True)  # the alone format: one seed's checkpoint
    assert ck["epoch"] == EPOCHS and ck["stream"]["seed"] == 1 and set(ck) >= {"model", "optimizer", "scheduler", "history"}


@pytest.mark.slow  # torch.compile on the CPU (~7 s): not in the quick loop (test-fast)
def test_the_compiled_stacked_step_gives_the_same_numbers(splits, alone, tmp_path):
    """The step as one torch.compile'd function (forward, backward, per-seed clipping and AdamW):
    traced here with the ``aot_eager`` backend (the graph the GPU compiles, without generating
    kernels on this CPU), each seed still equals itself alone, and each seed's run is told the
    mode that ran."""
    told = []
    members = _stack(splits, tmp_path, backend="aot_eager", on_step_mode=lambda mode, why: told.append((mode, why)))
    assert told == [("stacked-compiled", None)] * 3
    for s, m in enumerate(members):
        assert _agrees(m, alone[s], splits), f"seed {s}"
    assert torch.load(tmp_path / "stack2.pt", weights_only=True)["train_config"]["step_mode"] == "stacked-compiled"


def test_a_stacked_step_that_fails_to_compile_runs_eagerly_and_says_why(splits, alone, tmp_path, monkeypatch):
    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no working compiler here\nmore detail")
        return run

    monkeypatch.setattr(stacked.torch, "compile", broken)
    told = []
    members = _stack(splits, tmp_path, seeds=(0, 1), backend="inductor", on_step_mode=lambda mode, why: told.append((mode, why)))
    assert told == [("stacked", "torch.compile failed (RuntimeError: no working compiler here)")] * 2
    for s, m in enumerate(members):
        assert _agrees(m, alone[s], splits), f"seed {s}"
    assert stacked.resolve_stacked_step("auto", torch.device("cpu")) == "stacked"
    assert stacked.resolve_stacked_step("auto", torch.device("cuda")) == "stacked-compiled"
    assert stacked.resolve_stacked_step("eager", torch.device("cuda")) == "stacked"


def _shared_clip(grads, max_norm):  # one norm over all seeds' gradients
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef)


def _shared_draw(self, generator, n, B, p, device, _g=[]):  # noqa: B006 - one generator for every seed, as a bug would
    if not _g:
        _g.append(torch.Generator().manual_seed(0))
    return _REAL_DRAW(self, _g[0], n, B, p, device)


_REAL_DRAW = stacked._Masks.draw


@pytest.mark.parametrize("plant", ["order", "dropout", "clipping", "init"])
def test_a_shared_per_seed_element_is_caught(splits, alone, tmp_path, monkeypatch, plant):
    """Plant each per-seed element shared across the stack: at least one seed then differs
    from itself alone (the comparison above would fail)."""
    if plant == "order":  # every seed in seed 0's order
        real = stacked._order
        monkeypatch.setattr(stacked, "_order", lambda m, n, e: real(stacked.Member(None, _cfg(0), None), n, e))
    elif plant == "dropout":
        monkeypatch.setattr(stacked._Masks, "draw", _shared_draw)
    elif plant == "clipping":
        monkeypatch.setattr(stacked, "_clip_per_seed", _shared_clip)
    elif plant == "init":  # every seed starts from seed 0's weights
        real_init = stacked.init_weights
        monkeypatch.setattr(stacked, "init_weights", lambda model, g: real_init(model, _cfg(0).stream.torch_generator("init")))
    members = _stack(splits, tmp_path)
    assert not all(_agrees(m, alone[s], splits) for s, m in enumerate(members))


def test_seeds_at_different_epochs_train_together_and_one_resumes_alone(splits, alone, tmp_path):
    """A stack stopped after its first epoch; then seed 0 resumes alone, seeds 1 and 2 (1 from
    its epoch-1 checkpoint, 2 from scratch) resume as a stack: every seed ends as it would alone.
    The LR schedule and Adam's bias correction are per seed here (plant: shared -> seed 2 off)."""

    first = _stack(splits, tmp_path, on_epoch=_stop_after_first)
    assert all(isinstance(m.error, _Stop) for m in first)
    ck0 = tmp_path / "stack0.pt"
    assert torch.load(ck0, weights_only=True)["epoch"] == 1  # the checkpoint comes before the metrics
    m0 = _model()
    fit(m0, splits["train"], splits["val"], _cfg(0), tmp_path / "solo0.pt", resume_from=ck0, progress=False)
    assert _max_diff(m0, alone[0][0]) < TOL
    ck1 = tmp_path / "epoch1_s1.pt"
    (tmp_path / "stack1.pt").rename(ck1)
    seen = {1: [], 2: []}
    members = [stacked.Member(_model(), _cfg(1), tmp_path / "r1.pt", resume_from=ck1, on_epoch=lambda e, m: seen[1].append(e)),
               stacked.Member(_model(), _cfg(2), tmp_path / "r2.pt", on_epoch=lambda e, m: seen[2].append(e))]
    stacked.fit_stacked(members, splits["train"], splits["val"], progress=False)
    assert seen == {1: [1, 2], 2: [1, 2]}  # seed 1's first epoch replayed from its checkpoint, each epoch once
    for s, m in zip((1, 2), members, strict=True):
        assert _agrees(m, alone[s], splits), f"seed {s}"


def test_a_member_that_fails_leaves_and_the_others_go_on(splits, alone, tmp_path):
    def lose_lease(epoch, metrics):
        if epoch == 1:
            raise RuntimeError("lease lost")

    members = [stacked.Member(_model(), _cfg(0), tmp_path / "a.pt"),
               stacked.Member(_model(), _cfg(1), tmp_path / "b.pt", on_epoch=lose_lease),
               stacked.Member(_model(), _cfg(2), tmp_path / "c.pt")]
    stacked.fit_stacked(members, splits["train"], splits["val"], progress=False)
    assert str(members[1].error) == "lease lost" and [h["epoch"] for h in members[1].history] == [1]
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1  # nothing of it saved after it left
    assert _agrees(members[0], alone[0], splits) and _agrees(members[2], alone[2], splits)


class _Stop(Exception):
    pass


def _stop_after_first(epoch, metrics):
    """An epoch callback that stops training right after epoch 1 (its checkpoint is written first)."""
    if epoch == 1:
        raise _Stop


def _fewer_events(tr):
    """``tr`` without its last 7 events: other events than the stack's (a file split per seed)."""
    keep = torch.arange(len(tr) - 7)
    return features.Tensors({k: v[keep] for k, v in tr.inputs.items()}, tr.y[keep], tr.labels[keep.numpy()])


def test_a_stack_refuses_other_settings_and_a_shared_stream(tmp_path):
    with pytest.raises(Exception, match="must share lr"):
        stacked.check_members([stacked.Member(_model(), _cfg(0), tmp_path / "a"), stacked.Member(_model(), _cfg(1, lr=1e-3), tmp_path / "b")])
    with pytest.raises(Exception, match="share one random stream"):
        stacked.check_members([stacked.Member(_model(), _cfg(0), tmp_path / "a"), stacked.Member(_model(), _cfg(0), tmp_path / "b")])


def test_seed_stack_waits_for_its_seeds_runs_callbacks_in_their_threads_and_lets_one_leave(splits, alone, tmp_path):
    """The rendezvous the product uses (``pipeline.stack``): seeds in their own threads join; one
    leaves without training (finished already, say); the stack trains the two that came, and
    each seed's callbacks run in that seed's own thread (where its MLflow run is active)."""
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    stack = SeedStack(3, "t")
    seen, out = {}, {}

    def seed(s):
        if s == 1:
            stack.leave(1)
            stack.leave(1)  # idempotent
            return
        me = threading.get_ident()
        model = _model()
        hist = stack.fit(model, splits["train"], splits["val"], _cfg(s), tmp_path / f"q{s}.pt",
                         on_epoch=lambda e, m: seen.setdefault(s, set()).add(threading.get_ident() == me))
        out[s] = (model, hist)

    threads = [threading.Thread(target=seed, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(out) == [0, 2] and seen == {0: {True}, 2: {True}}
    for s in (0, 2):
        assert _max_diff(out[s][0], alone[s][0]) < TOL
        assert [h["epoch"] for h in out[s][1]] == [1, 2]


def test_a_seed_with_other_events_trains_alone_and_the_stack_goes_on(splits, alone, tmp_path):
    """A seed whose inputs differ from the stack's (a pre-binned file split per seed) cannot share
    its batches: it trains alone in its own thread and the other seeds stack without it (plant:
    refuse it instead -> that seed fails)."""
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    tr = splits["train"]
    other = _fewer_events(tr)
    stack, out, modes = SeedStack(3, "t"), {}, {}

    def seed(s):
        model = _model()
        data = other if s == 2 else tr
        hist = stack.fit(model, data, splits["val"], _cfg(s), tmp_path / f"o{s}.pt",
                         on_step_mode=lambda mode, why: modes.__setitem__(s, mode))
        out[s] = (model, hist)

    threads = [threading.Thread(target=seed, args=(s,)) for s in range(3)]
    for t in threads[:2]:
        t.start()
    while len(stack._members) < 2:  # the stack's events are those of the first seed to join: seeds 0 and 1 here
        threading.Event().wait(0.01)
    threads[2].start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(out) == [0, 1, 2] and modes == {0: "stacked", 1: "stacked", 2: "eager"}
    for s in (0, 1):
        assert _max_diff(out[s][0], alone[s][0]) < TOL
    solo = _model()
    fit(solo, other, splits["val"], _cfg(2), tmp_path / "solo2.pt", progress=False)
    assert _max_diff(out[2][0], solo) == 0


def test_seed_stack_hands_each_seed_its_resume_checkpoints_and_extra_state(splits, alone, tmp_path, caplog):
    """Through the rendezvous as the cell path calls it: a seed resuming from its epoch-1
    checkpoint trains only epoch 2 (plant: its resume point dropped -> both epochs again); each
    seed's checkpoints are written to its own path, announced in its own thread, and carry the
    state the cell adds (its scaler; plants: the checkpoint hook or the extra state dropped);
    each epoch's line goes to the log in the seed's thread, as fit writes it alone (plant: no line)."""
    import logging
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    _stack(splits, tmp_path, seeds=(1,), on_epoch=_stop_after_first)
    ck1 = tmp_path / "stack1.pt"
    stack, out, saved, epochs = SeedStack(2, "t"), {}, {0: [], 1: []}, {0: [], 1: []}

    def out_auc(s, e):  # the seed's own val AUC of epoch e, as it trains alone
        return alone[s][1][e - 1]["metrics"]["val_auc"]

    def seed(s):
        me = threading.get_ident()
        model = _model()
        hist = stack.fit(model, splits["train"], splits["val"], _cfg(s), tmp_path / f"x{s}.pt", resume_from=ck1 if s == 1 else None,
                         on_checkpoint=lambda path: saved[s].append((threading.get_ident() == me, path.name,
                                                                      torch.load(path, weights_only=True)["epoch"])),
                         extra_state={"scaler": f"scaler of seed {s}"},
                         on_epoch=lambda e, m: epochs[s].append((e, round(m["val_auc"], 9) == round(out_auc(s, e), 9))))
        out[s] = (model, hist)

    threads = [threading.Thread(target=seed, args=(s,), name=f"seed{s}") for s in range(2)]
    with caplog.at_level(logging.INFO, logger="thesis_mlflow.pipeline.stack"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert saved == {0: [(True, "x0.pt", 1), (True, "x0.pt", 2)], 1: [(True, "x1.pt", 2)]}, saved
    assert epochs == {0: [(1, True), (2, True)], 1: [(1, True), (2, True)]}, epochs  # each epoch and its own metrics
    lines = sorted((r.threadName, r.getMessage().split(" train_loss")[0]) for r in caplog.records if "(stacked)" in r.getMessage())
    assert lines == [("seed0", "epoch 1/2"), ("seed0", "epoch 2/2"), ("seed1", "epoch 1/2"), ("seed1", "epoch 2/2")], lines
    for s in (0, 1):
        assert torch.load(tmp_path / f"x{s}.pt", weights_only=True)["scaler"] == f"scaler of seed {s}"
        assert _max_diff(out[s][0], alone[s][0]) < TOL


def test_a_seed_that_trains_alone_keeps_its_resume_point_hooks_and_extra_state(splits, tmp_path):
    """The seed with other events trains through ``fit`` with everything the cell gave it: it
    resumes from its epoch-1 checkpoint (only epoch 2 is checkpointed again), its epochs and
    checkpoints reach its hooks, its checkpoint carries the cell's state (plants: any of them
    dropped on the way to fit)."""
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    tr = splits["train"]
    other = _fewer_events(tr)
    with pytest.raises(_Stop):
        fit(_model(), other, splits["val"], _cfg(1), tmp_path / "first1.pt", on_epoch=_stop_after_first, progress=False)
    stack, epochs, saved = SeedStack(2, "t"), {0: [], 1: []}, {0: [], 1: []}

    def seed(s):
        stack.fit(_model(), other if s == 1 else tr, splits["val"], _cfg(s, epochs=2), tmp_path / f"a{s}.pt",
                  resume_from=tmp_path / "first1.pt" if s == 1 else None, on_epoch=lambda e, m: epochs[s].append(e),
                  on_checkpoint=lambda p: saved[s].append(torch.load(p, weights_only=True)["epoch"]),
                  extra_state={"scaler": f"of seed {s}"})

    t0 = threading.Thread(target=seed, args=(0,))
    t0.start()
    while len(stack._members) < 1:  # seed 0's events are the stack's; seed 1's differ
        threading.Event().wait(0.01)
    t1 = threading.Thread(target=seed, args=(1,))
    t1.start()
    for t in (t0, t1):
        t.join(timeout=120)
    assert saved == {0: [1, 2], 1: [2]} and epochs == {0: [1, 2], 1: [1, 2]}, (saved, epochs)
    assert torch.load(tmp_path / "a1.pt", weights_only=True)["scaler"] == "of seed 1"


def test_a_stack_whose_other_seeds_all_left_trains_the_one_that_came():
    """Three seeds expected, two leave (finished already, say), one after the other in the same
    pool thread, as a ``ThreadPoolExecutor`` hands an idle thread the next seed: the one that
    joins trains, not waits for ever (plants: the leavers counted as one; seeds told apart by
    their thread, as they were, which counted the second leaver as the first leaving again)."""
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=200, seed=3))
    b = Binning().fit(sp["train"])
    data = {s: features.make_tensors(features.token_inputs(b.transform(sp[s]), True), sp[s].y, "4t_vs_bg") for s in ("train", "val")}
    stack, out = SeedStack(3, "t"), {}

    def join():
        out["history"] = stack.fit(_model(), data["train"], data["val"], _cfg(0, epochs=1), Path(tempfile.mkdtemp()) / "j.pt", progress=False)

    one_thread = threading.Thread(target=lambda: (stack.leave(1), stack.leave(2)))
    one_thread.start()
    one_thread.join()
    joiner = threading.Thread(target=join, daemon=True)
    joiner.start()
    joiner.join(timeout=60)
    assert not joiner.is_alive() and [h["epoch"] for h in out["history"]] == [1]


def test_a_seed_whose_callback_fails_gets_its_error_and_the_others_go_on(splits, alone, tmp_path):
    """Seed 1's epoch callback fails in its own thread (its lease lost, say): its ``fit`` raises
    that error, seed 0 trains on to the end as it would alone (plant: the callback's error not
    handed back -> seed 1 trains on as if nothing happened)."""
    import threading

    from thesis_mlflow.pipeline.stack import SeedStack

    def lose_lease(e, m):
        if e == 1:
            raise RuntimeError("lease lost")

    stack, out = SeedStack(2, "t"), {}

    def seed(s):
        model = _model()
        try:
            out[s] = (model, stack.fit(model, splits["train"], splits["val"], _cfg(s), tmp_path / f"f{s}.pt",
                                       on_epoch=lose_lease if s == 1 else None))
        except RuntimeError as e:
            out[s] = e

    threads = [threading.Thread(target=seed, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "lease lost"
    assert [h["epoch"] for h in out[0][1]] == [1, 2] and _max_diff(out[0][0], alone[0][0]) < TOL


def test_seeds_with_the_same_labels_but_other_inputs_do_not_stack(splits):
    """Same events count and labels, other inputs (another binning of the same file, say): not
    the stack's events (plants: any one of length, labels or inputs enough to count as the same)."""
    from thesis_mlflow.learn.features import Tensors
    from thesis_mlflow.pipeline.stack import _same_events

    tr = splits["train"]
    other_inputs = Tensors({k: v.flip(0) for k, v in tr.inputs.items()}, tr.y, tr.labels)
    other_labels = Tensors(tr.inputs, 1 - tr.y, tr.labels)
    assert _same_events(tr, tr)
    assert not _same_events(tr, other_inputs) and not _same_events(tr, other_labels)
