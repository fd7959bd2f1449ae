"""Who works on a run: leases decided by the tracking server, never by comparing clocks.

The one atomic operation used: **a run's param is written once**. MLflow refuses to change a
logged param (the store's primary key on (run, key) decides between writers that race), so
of several processes writing ``lease.g<N>`` on one run exactly one succeeds; writing the same
value again succeeds (an HTTP retry is harmless). The value names the holder: host, pid and a
random token.

- **A train run** (and a grid's parent run) is one object: the process that writes the next
  generation ``lease.g<N+1>`` on it holds it (``acquire_run``).
- **An upstream claim** (one binning / VQ-VAE run per settings when many jobs start at once)
  has no single object to begin with: every job creates its own claim run, then writes its
  token on every live claim run it can see, in run-id order, stopping at its first refusal;
  the job whose writes all succeeded holds generation N (``find_or_claim``). Two jobs always
  share a run both must write (the later one's search sees the earlier one's run, or the
  other way round), so at most one wins; and some job that finishes its writes wins.

Liveness, judged by the waiter alone: the holder bumps the tag ``lease.beat`` every ``BEAT_S``
seconds. A waiter on the holder's host asks the operating system whether the holder's pid is
alive; elsewhere it watches ``lease.beat`` on its own monotonic clock: a change means alive,
no change for ``stale_s()`` (longer than the client's retry budget for an unreachable server
plus two beats) means dead. A dead holder is tagged ``lease.lost`` and the next generation is
written. A holder re-checks its lease at every beat and before it marks anything FINISHED,
and stops (``LeaseLost``) when it no longer holds it. A holder that stops normally tags
``lease.ended``: the next process need not wait.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlflow

from thesis_mlflow.errors import LeaseHeld, LeaseLost, StepFailed
from thesis_mlflow.tracking import queries
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)

PREFIX = "lease.g"  # param lease.g<N>: the holder of generation N (written once)
BEAT = "lease.beat"  # tag bumped by the holder (and by waiting claimants, on their own claim)
ENDED = "lease.ended"  # tag: generation N was released by its holder
LOST = "lease.lost"  # tag: generation N's holder went silent and was taken over (not a failure)
TRY = "lease.try.g"  # tag on a claimant's own run: it competes for generation N
RESULT = "lease.result.g"  # tag on a claimant's own run: won / lost generation N
OWNER = "lease.owner"  # tag on a claim run: the claimant that created it
CLAIM_TAG = "claim.key"
CLAIM_RESULT = "claim.result"  # tag on a claim run that lost: "lost", the run KILLED (kept: the jobs' login may not delete runs)
MAX_FAILED_HOLDERS = 3


def beat_s() -> float:
    return float(os.environ.get("THESIS_MLFLOW_LEASE_BEAT_S", "15"))


def stale_s() -> float:
    """Silence after which a holder elsewhere counts as dead: the longest a holder that cannot
    reach the server keeps trying one request (``tracking.retry_budget_s``: attempts with their
    timeouts, waits with their jitter) plus two beats: 489 + 30 = 519 s with the defaults."""
    env = os.environ.get("THESIS_MLFLOW_LEASE_STALE_S")
    return float(env) if env else tracking.retry_budget_s() + 2 * beat_s()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This machine's boot: a pid recorded before a reboot names no process now."""
    return _read("/proc/sys/kernel/random/boot_id").replace("-", "")[:12]


def pid_namespace() -> str:
    """This process's pid namespace: in another one (an Apptainer or Docker job with its own)
    the same number is another process."""
    try:
        return os.readlink("/proc/self/ns/pid").split("[")[-1].rstrip("]")
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot): a reused pid has another."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""  # field 22 of proc(5), counted after the command name


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: host, pid and a random token, and what makes the pid mean one process
    (``ident``: boot id, pid namespace and start time, ``<boot>.<ns>.<start>``)."""

    host: str
    pid: int
    token: str = field(default_factory=lambda: secrets.token_hex(6))
    ident: str = ""

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}" + (f":{self.ident}" if self.ident else "")

    @classmethod
    def here(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, ident=f"{boot_id()}.{pid_namespace()}.{start_ticks(pid)}")

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        """A holder as written; ``host:pid:token`` (written before ``ident``) too."""
        try:
            parts = str(text).split(":")
            if len(parts) == 3:
                return cls(parts[0], int(parts[1]), parts[2])
            host, pid, token, ident = parts
            return cls(host, int(pid), token, ident)
        except (ValueError, TypeError):
            return None

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}"


def generations(params: dict) -> dict[int, str]:
    out = {}
    for k, v in params.items():
        if k.startswith(PREFIX) and k[len(PREFIX):].isdigit():
            out[int(k[len(PREFIX):])] = v
    return out


def write_once(run_id: str, key: str, value: str) -> bool:
    """Write param ``key`` = ``value`` unless the run already has another value: True when the
    run holds ``value`` afterwards (this writer won, or wrote it before)."""
    c = tracking.client()
    try:
        c.log_param(run_id, key, value)
        return True
    except mlflow.exceptions.MlflowException:
        current = c.get_run(run_id).data.params.get(key)
        if current is None:
            raise  # a real failure, not a lost race
        return current == value


def pid_alive(h: Holder) -> bool | None:
    """Whether the holder's process lives, judged here when its pid means something here; None
    (watch its beats instead) when it ran on another host or in another pid namespace.

    Dead: the machine rebooted since (another boot id); no such pid; a pid we may not signal
    (another user's process: our jobs run as us, so it is not the holder); a pid whose process
    started at another time than the holder's (reused). Holders written before ``ident`` was
    recorded: a pid now used by a process that is not Python counts as dead."""
    if h.host != socket.gethostname():
        return None
    boot = ns = start = None
    if h.ident:
        boot, ns, start = (h.ident.split(".") + ["", "", ""])[:3]
        if boot and boot != boot_id():
            return False
        if ns != pid_namespace():
            return None
    try:
        os.kill(h.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # cannot signal is not alive: another user's process under a reused pid
    if h.ident:
        return start_ticks(h.pid) == start
    try:  # the executable, not the command line: a process may retitle itself (setproctitle, as pytest-xdist does)
        return "python" in os.path.basename(os.readlink(f"/proc/{h.pid}/exe")).lower()
    except OSError:
        pass
    try:
        with open(f"/proc/{h.pid}/cmdline", "rb") as f:
            return b"python" in f.read().lower()
    except OSError:
        return True


def _watch(run_id: str, beat: str | None, gen: int, poll_s: float) -> bool:
    """Watch a holder elsewhere: True as soon as its beat changes (alive) or its generation
    ends; False when the beat stays unchanged for ``stale_s()`` on this process's clock."""
    c = tracking.client()
    t0 = time.monotonic()
    while time.monotonic() - t0 < stale_s():
        time.sleep(min(poll_s, stale_s()))
        r = c.get_run(run_id)
        if r.data.tags.get(BEAT) != beat or r.data.tags.get(ENDED) == str(gen) or max(generations(r.data.params), default=0) != gen:
            return True
    return False


def _holder_alive(run, gen: int, poll_s: float) -> bool:
    h = Holder.parse(generations(run.data.params).get(gen))
    alive = pid_alive(h) if h else False
    if alive is None:
        alive = _watch(run.info.run_id, run.data.tags.get(BEAT), gen, poll_s)
    return alive


class Lease:
    """Generation ``gen`` of the lease on ``run_id``, held by this process: beats, verifies, releases."""

    def __init__(self, run_id: str, gen: int, holder: Holder, check: bool = True):
        self.run_id, self.gen, self.holder, self.checking = run_id, gen, holder, check
        self.uri = tracking.tracking_uri()  # the store it was taken on: the beat thread writes there only
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None
        self._count = 0
        self._confirmed = float("-inf")  # when the server last confirmed this lease (monotonic)

    def __repr__(self) -> str:
        return f"Lease({self.run_id}, g{self.gen}, {self.holder})"

    def beat(self, retry: bool = True) -> None:
        """Bump ``lease.beat``; the beat thread's own beats are not retried under overload (its
        next beat is the retry, and a beat held in backoff would keep beating after a release)."""
        self._count += 1
        c = tracking.client(self.uri) if retry else tracking.raw_client(self.uri)
        c.set_tag(self.run_id, BEAT, f"{self.gen}.{self._count}.{self.holder.token}")

    def start(self) -> Lease:
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(beat_s()):
            try:
                if self.checking and not self.holds():
                    self._lost = True
                    log.error("lease on run %s was taken over by another process; stopping", self.run_id)
                    return
                self.beat(retry=False)
            except Exception as e:  # a server restart or overload: the next beat tries again
                log.debug("lease beat of %s failed: %s", self.run_id, e)

    def holds(self) -> bool:
        r = tracking.client(self.uri).get_run(self.run_id)
        gens = generations(r.data.params)
        return max(gens, default=0) == self.gen and gens[self.gen] == str(self.holder) and r.data.tags.get(LOST) != str(self.gen) \
            and r.info.lifecycle_stage != "deleted"

    def check(self) -> None:
        """``LeaseLost`` when the beat thread found the lease taken over (no request)."""
        if self._lost:
            self.verify()

    def verify(self, max_age: float = 0.0) -> None:
        """Raise ``LeaseLost`` unless this process still holds the lease (checked on the server).

        ``max_age``: a confirmation the server gave less than that many seconds ago (this
        process's monotonic clock, which runs on while the process is stopped) still counts:
        the writes of one batch (an epoch's checkpoint, metrics and log) cost one check."""
        if self._lost:
            raise self._lost_error()
        if max_age and time.monotonic() - self._confirmed < max_age:
            return
        if not self.holds():
            self._lost = True
            raise self._lost_error()
        self._confirmed = time.monotonic()

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(f"run {self.run_id}: another process took over generation {self.gen} of its lease; this one stops "
                         "without marking anything finished")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Stop beating and tell waiters this generation is over (they need not wait for silence)."""
        self.stop()
        if not self._lost:
            try:
                tracking.client(self.uri).set_tag(self.run_id, ENDED, str(self.gen))
            except Exception as e:  # the next process waits for the beat to go stale instead
                log.warning("could not release the lease on %s: %s", self.run_id, e)

    @contextmanager
    def kept(self) -> Iterator[Lease]:
        """Beat while the body runs; release at the end unless the lease was lost."""
        if self._thread is None:
            self.start()
        try:
            yield self
        finally:
            self.release()


# --------------------------------------------------------------------------- one run


def acquire_run(run_id: str, what: str | None = None, poll_s: float = 2.0, holder: Holder | None = None) -> Lease:
    """The lease on ``run_id`` (a train run, a grid's parent), or ``LeaseHeld`` naming the live
    holder. A holder on this host is judged by its pid (at once), one elsewhere by its beat
    (within one beat period when alive, after ``stale_s()`` when dead)."""
    c = tracking.client()
    me = holder or Holder.here()
    what = what or f"run {run_id}"
    while True:
        r = c.get_run(run_id)
        gens = generations(r.data.params)
        n = max(gens, default=0)
        if n and r.data.tags.get(ENDED) != str(n) and r.data.tags.get(LOST) != str(n):
            if gens[n] == str(me):
                return Lease(run_id, n, me).start()
            if _holder_alive(r, n, poll_s):
                raise LeaseHeld(what, Holder.parse(gens[n]).describe() if Holder.parse(gens[n]) else gens[n])
            log.warning("%s: holder %s went silent; taking over", what, gens[n])
            c.set_tag(run_id, LOST, str(n))
        if write_once(run_id, f"{PREFIX}{n + 1}", str(me)):
            return Lease(run_id, n + 1, me).start()


def release_dead(run_id: str, pid: int) -> None:
    """A child process of ours died holding ``run_id``'s lease: release it for the next attempt."""
    c = tracking.client()
    r = c.get_run(run_id)
    gens = generations(r.data.params)
    if gens:
        n = max(gens)
        h = Holder.parse(gens[n])
        if h and h.host == socket.gethostname() and h.pid == pid and r.data.tags.get(ENDED) != str(n):
            c.set_tag(run_id, LOST, str(n))


def holder_of(run) -> Holder | None:
    """The live-looking holder recorded on a run (None when released, lost or never leased)."""
    gens = generations(run.data.params)
    if not gens:
        return None
    n = max(gens)
    if run.data.tags.get(ENDED) == str(n) or run.data.tags.get(LOST) == str(n):
        return None
    return Holder.parse(gens[n])


# --------------------------------------------------------------------------- upstream claims


def claim_key(step: str, params: dict) -> str:
    text = step + "|" + "|".join(f"{k}={tracking.fmt(v)}" for k, v in sorted(params.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _claims(key: str, exp_id: str) -> list:
    c = tracking.client()
    return c.search_runs([exp_id], f"tags.`{CLAIM_TAG}` = '{key}'", max_results=1000)


def _is_live(r) -> bool:
    return r.info.status == "RUNNING" and r.info.lifecycle_stage != "deleted"


def _winner(claims: list, gen: int):
    """The claim run that won generation ``gen`` (its own token on it, and its result says so)."""
    for r in claims:
        if r.data.params.get(f"{PREFIX}{gen}") == r.data.tags.get(OWNER) and r.data.tags.get(f"{RESULT}{gen}") == "won":
            return r
    return None


def _compete(mine: str, me: Holder, gen: int, key: str, exp_id: str) -> bool:
    """Write ``me`` as generation ``gen`` on every live claim run, in run-id order, stopping at
    the first refusal; record the outcome on our own run."""
    c = tracking.client()
    c.set_tag(mine, f"{TRY}{gen}", "1")
    live = sorted({r.info.run_id for r in _claims(key, exp_id) if _is_live(r)} | {mine})
    won = all(write_once(rid, f"{PREFIX}{gen}", str(me)) for rid in live)
    c.set_tag(mine, f"{RESULT}{gen}", "won" if won else "lost")
    return won


def find_or_claim(step: str, params: dict, run_name: str, poll_s: float = 2.0, holder: Holder | None = None,
                  find=None) -> tuple[mlflow.entities.Run | None, Lease | None]:
    """``(finished run, None)`` when a FINISHED ``step`` run with ``params`` exists (now or after
    waiting for another job's), else ``(None, lease)`` on a claim run this job won: run the step
    in ``lease.run_id`` (``step_run(run_id=..., lease=lease)``) inside ``claimed(lease)``.

    Losing a race, waiting, and taking over a silent holder are not failures; a holder whose
    run ended FAILED by itself is, and after ``MAX_FAILED_HOLDERS`` of them this job gives up.
    ``find(exp_id)``: what counts as already there (default: a FINISHED run of ``step`` with ``params``)."""
    c = tracking.client()
    exp_id = tracking.current_experiment_id()
    key = claim_key(step, params)
    me = holder or Holder.here()
    find = find or (lambda exp: queries.find_finished_run(step, params, exp))
    mine: str | None = None
    waiting: Lease | None = None  # our own claim run, kept visibly alive while we wait
    failed: set[str] = set()
    silent: dict[str, tuple[str | None, float]] = {}  # run -> (last beat seen, monotonic time it was seen first)

    def give_up_ours(done=None) -> None:
        if waiting is not None:
            waiting.stop()
        if mine is not None:
            end_claim(mine, done)

    try:
        while True:
            done = find(exp_id)
            if done is not None:
                give_up_ours(done)
                return done, None
            if mine is None:
                mine = c.create_run(exp_id, run_name=run_name, tags={"step": step, CLAIM_TAG: key, OWNER: str(me)}).info.run_id
                waiting = Lease(mine, 0, me, check=False).start()  # beats only: "this claimant is alive"
            claims = _claims(key, exp_id)
            own = next((r for r in claims if r.info.run_id == mine), None)
            if own is not None and (not _is_live(own) or own.data.tags.get(LOST) is not None):
                # another job took our claim for dead (we were paused past stale_s): it is out of the race;
                # compete with a new one rather than count a claim the others no longer do
                log.warning("%s claim run %s was taken as dead by another job; claiming anew", step, mine)
                waiting.stop()
                end_claim(mine)
                mine = waiting = None
                continue
            n = max((g for r in claims for g in generations(r.data.params)), default=0)
            holder = _winner(claims, n) if n else None
            live = [r for r in claims if _is_live(r) and r.data.tags.get(LOST) is None]
            for r in live:  # a claimant (holder or waiter) is dead: its pid here, or silent for stale_s() on our clock
                if r.info.run_id == mine:
                    continue
                owner = Holder.parse(r.data.tags.get(OWNER))
                alive_here = pid_alive(owner) if owner else None
                b = r.data.tags.get(BEAT)
                if r.info.run_id not in silent or silent[r.info.run_id][0] != b:
                    silent[r.info.run_id] = (b, time.monotonic())  # first seen, or it beat: its silence starts now
                seen, since = silent[r.info.run_id]
                if alive_here is False or (alive_here is None and b == seen and time.monotonic() - since > stale_s()):
                    log.warning("%s claim run %s: its job is gone (%s); taking over", step, r.info.run_id,
                                "pid not alive" if alive_here is False else f"silent for {time.monotonic() - since:.0f} s")
                    c.set_tag(r.info.run_id, LOST, str(n))
                    c.set_terminated(r.info.run_id, "FAILED")
            if holder is not None and holder.info.run_id == mine:
                waiting.stop()
                return None, Lease(mine, n, me)
            if holder is not None and _is_live(holder) and holder.data.tags.get(LOST) is None:
                time.sleep(poll_s)  # the holder works; we wait (and keep beating on our claim)
                continue
            if holder is not None and holder.info.status == "FINISHED":
                continue  # its work is done: found at the top of the loop
            if holder is not None and not _is_live(holder):
                if holder.info.status == "FAILED" and holder.data.tags.get(LOST) is None and holder.info.run_id not in failed:
                    failed.add(holder.info.run_id)
                    if len(failed) >= MAX_FAILED_HOLDERS:
                        raise StepFailed(f"{step} with these settings failed in {len(failed)} other jobs (last: run "
                                           f"{holder.info.run_id}); see their logs")
                target = n + 1
            elif holder is not None:  # lost
                target = n + 1
            else:
                undecided = [r for r in live if r.data.tags.get(f"{TRY}{n}") and not r.data.tags.get(f"{RESULT}{n}")]
                if n and undecided and any(r.info.run_id != mine for r in undecided):
                    time.sleep(poll_s)  # a competition for generation n is still being written
                    continue
                decided_all_lost = n and not undecided and any(r.data.tags.get(f"{TRY}{n}") for r in claims)
                target = n + 1 if decided_all_lost else max(n, 1)
            if _compete(mine, me, target, key, exp_id):
                done = find(exp_id)  # finished between our look and our win (we were slow): use it
                if done is not None:
                    give_up_ours(done)
                    return done, None
                waiting.stop()
                return None, Lease(mine, target, me)
            time.sleep(poll_s / 4)
    except BaseException:
        give_up_ours()  # we never won (a win returns): our claim run goes, the others carry on
        raise


def end_claim(run_id: str, done=None) -> None:
    """A claim run that did not win: tagged ``claim.result=lost`` and ended KILLED, never deleted
    (MLflow's EDIT permission, the jobs' login, does not include deleting runs; MANAGE, which
    does, would also let a job change who may read the study). An upstream step's losers are
    nested under the run that did the work (the UI folds them away); a grid's are left flat
    (its parent's children are its cells)."""
    c = tracking.client()
    tags = {CLAIM_RESULT: "lost"}
    if done is not None and done.data.tags.get("step") in ("binning", "vqvae"):
        tags["mlflow.parentRunId"] = done.info.run_id
        tags["claim.served_by"] = done.info.run_id
    try:
        for k, v in tags.items():
            c.set_tag(run_id, k, v)
        c.set_terminated(run_id, "KILLED")
    except Exception as e:  # noqa: BLE001 - a leftover claim is untidy, not wrong: it is not RUNNING-and-beating
        log.warning("could not end claim run %s: %s", run_id, e)


@contextmanager
def claimed(lease: Lease | None) -> Iterator[None]:
    """Keep a won claim alive while its holder works; on an exception the claim ends FAILED."""
    if lease is None:
        yield
        return
    lease.start()
    try:
        yield
    except LeaseLost:
        raise
    except BaseException:
        c = tracking.client()
        if c.get_run(lease.run_id).info.status == "RUNNING":
            c.set_terminated(lease.run_id, "FAILED")
        raise
    finally:
        lease.release()
