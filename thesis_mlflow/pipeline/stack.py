"""The seeds of one configuration, each in its own thread with its own run, trained as one model.

A grid trains a configuration's seeds as separate cells: each has its child run, lease, fence,
log, checkpoint and resume (``cell.train_cell``). Stacking keeps all of that and changes only
who computes: each seed's thread runs ``train_cell`` as usual, and where it would call
``training.fit`` it joins a ``SeedStack`` instead. When every expected seed has joined (or
left: finished already, failed before training, trained elsewhere), one coordinator thread
trains them together (``learn.stacked.fit_stacked``) and hands each seed's callbacks back to
that seed's own thread, where its MLflow run is active, its lease is checked and its log
records go. So each seed's metrics are logged on its own run by its own thread, and a seed whose
callback fails (its lease lost) leaves the stack with that error while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path

import torch

from thesis_mlflow.learn.stacked import Member, fit_stacked
from thesis_mlflow.learn.training import fit

log = logging.getLogger(__name__)
_DONE = object()


class SeedStack:
    """A rendezvous of ``n`` seeds of one configuration (one per thread)."""

    def __init__(self, n: int, name: str = "stack"):
        self.n, self.name = n, name
        self._lock = threading.Lock()
        self._members: list = []
        self._inbox: dict[int, queue.Queue] = {}
        self._data = None
        self._left = 0
        # seeds (not threads: a pool thread may run one seed that leaves, then another) that joined or left
        self._joined: set[int] = set()
        self._started = False

    # ------------------------------------------------------------------ seen from a seed's thread
    def fit(self, model, train, val, cfg, checkpoint_path: Path, resume_from: Path | None = None, on_epoch=None,
            on_checkpoint=None, progress: bool = True, extra_state: dict | None = None, on_step_mode=None) -> list[dict]:
        """``training.fit``'s signature: this seed's training, done together with the others'."""
        me = cfg.seed
        inbox: queue.Queue = queue.Queue()
        member = Member(model, cfg, Path(checkpoint_path), resume_from, self._relay(inbox, on_epoch, cfg.epochs),
                        self._relay(inbox, on_checkpoint), extra_state, self._relay(inbox, on_step_mode))
        with self._lock:
            alone = False
            if self._data is None:
                self._data = (train, val)
            elif not _same_events(train, self._data[0]) or not _same_events(val, self._data[1]):
                alone = True  # e.g. a pre-binned file split per seed: this seed trains on its own
            if alone:
                self._leave(me)
            else:
                self._members.append(member)
                self._inbox[id(member)] = inbox
                self._joined.add(me)
                self._maybe_start()
        if alone:
            log.warning("%s: seed %d trains on other events than the stack's; it trains alone", self.name, cfg.seed)
            return fit(model, train, val, cfg, checkpoint_path, resume_from=resume_from, on_epoch=on_epoch,
                       on_checkpoint=on_checkpoint, progress=progress, extra_state=extra_state, on_step_mode=on_step_mode)
        while True:  # serve this seed's callbacks in its own thread until the stack is done
            item = inbox.get()
            if item is _DONE:
                break
            fn, args, box = item
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - returned to the coordinator, which drops this seed
                box["error"] = e
            box["event"].set()
        if member.error is not None:
            raise member.error
        return member.history

    def leave(self, seed: int) -> None:
        """``seed`` will not join (done, failed before training, held elsewhere): the others need
        not wait for it. Idempotent; a no-op once the seed has joined."""
        with self._lock:
            if seed not in self._joined:
                self._leave(seed)

    def _leave(self, seed: int) -> None:  # under the lock
        self._joined.add(seed)
        self._left += 1
        self._maybe_start()

    # ------------------------------------------------------------------ the coordinator
    def _maybe_start(self) -> None:
        if self._started or len(self._members) + self._left < self.n or not self._members:
            return
        self._started = True
        threading.Thread(target=self._run, name=f"{self.name}-coordinator", daemon=True).start()

    def _run(self) -> None:
        train, val = self._data
        try:
            log.info("%s: %d seed(s) trained as one stacked model", self.name, len(self._members))
            with _cuda_stream(self._members[0].cfg.device):
                fit_stacked(self._members, train, val)
        except BaseException as e:  # noqa: BLE001 - a failure of the stack as a whole fails every seed still in it
            for m in self._members:
                if m.error is None:
                    m.error = e
        finally:
            for m in self._members:
                self._inbox[id(m)].put(_DONE)

    @staticmethod
    def _relay(inbox: queue.Queue, fn, epochs: int | None = None):
        """``fn`` run in the seed's own thread; its exception comes back to the caller. With
        ``epochs`` (an ``on_epoch``), the epoch's line goes into the seed's own log first, as fit
        writes it alone."""
        if fn is None:
            return None
        if epochs is not None:
            on_epoch = fn

            def fn(e, m):
                log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f (stacked)", e, epochs, m["train_loss"],
                         m["val_loss"], m["val_auc"])
                return on_epoch(e, m)

        def call(*args):
            box = {"event": threading.Event()}
            inbox.put((fn, args, box))
            box["event"].wait()
            if "error" in box:
                raise box["error"]
            return box.get("value")

        return call


def _same_events(a, b) -> bool:
    """Two splits with the same events (the seeds of a configuration read the same file)."""
    return len(a) == len(b) and bool((a.y == b.y).all()) and all(
        k in b.inputs and a.inputs[k].shape == b.inputs[k].shape and bool((a.inputs[k] == b.inputs[k]).all()) for k in a.inputs)


def _cuda_stream(device: str):
    """The coordinator's own CUDA stream on a GPU (other stacks train on theirs); nothing on a CPU."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.stream(torch.cuda.Stream())
    return contextlib.nullcontext()
