"""What SLURM knows of a grid's jobs, one ``jobs.JobView`` per cell, for ``grid status``.

Three sources, best first: the controller (``squeue -t all``: pending with its reason, running,
requeued, and every ended job for ``MinJobAge``, 5 minutes by default), accounting (``sacct``,
where the cluster keeps it) and, when SLURM has forgotten a job and keeps no accounting, the
job's own log: SLURM's step daemon writes why it ended a job there (``CANCELLED AT ... DUE TO
TIME LIMIT``, ``exceeded memory limit``) and the pack writes what it did (lines starting with
``thesis-mlflow:``). Only jobs in the grid's private jobs record are read, and only when the
job SLURM reports under that id has the recorded name and is the user's own (after a
controller's restart job ids start again).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from thesis_mlflow.grid import jobs
from thesis_mlflow.grid.jobs import JobView
from thesis_mlflow.grid.slurm.commands import query
from thesis_mlflow.grid.slurm.injob import MARK
from thesis_mlflow.grid.slurm.submit import log_path, read_jobs

log = logging.getLogger(__name__)
SLURM = "SLURM"


@dataclass(frozen=True)
class SlurmJob:
    """One job as the controller or accounting reports it."""

    job: str
    name: str
    state: str  # SLURM's JobState: PENDING, RUNNING, TIMEOUT ...
    reason: str = ""
    restarts: int = 0


SQUEUE_FIELDS = "JobID:|,Name:|,State:|,Reason:|,RestartCnt:|"


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """``squeue -h -O JobID:|,Name:|,State:|,Reason:|,RestartCnt:|`` lines -> jobs by id."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0].strip():
            continue
        jid, name, state, reason, restarts = (p.strip() for p in parts[:5])
        out[jid] = SlurmJob(jid, name, state.upper(), "" if reason in ("None", "(null)") else reason, int(restarts) if restarts.isdigit() else 0)
    return out


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """``sacct -n -P -X --format=JobID,JobName,State,Reason`` lines -> jobs by id (``CANCELLED by 0`` -> CANCELLED)."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0].strip():
            continue
        jid = parts[0].split("_")[0].split("+")[0].strip()
        out[jid] = SlurmJob(jid, parts[1].strip(), parts[2].split()[0].upper() if parts[2].split() else "",
                       parts[3].strip() if len(parts) > 3 and parts[3].strip() not in ("None", "(null)") else "")
    return out


def scheduler_jobs(ids: list[str]) -> tuple[dict[str, SlurmJob], bool]:
    """The user's jobs among ``ids`` as SLURM knows them now, and whether the controller answered."""
    text = query(["squeue", "-h", "-t", "all", "--me", "-O", SQUEUE_FIELDS])
    if text is None:
        return {}, False
    known = {k: v for k, v in parse_squeue(text).items() if k in ids}
    gone = [i for i in ids if i not in known]
    if gone:  # ended longer ago than the controller remembers: accounting, where the cluster keeps it
        acct = query(["sacct", "-n", "-P", "-X", "--format=JobID,JobName,State,Reason", "-j", ",".join(gone)])
        if acct:
            known.update({k: v for k, v in parse_sacct(acct).items() if k in gone})
    return known, True


# --------------------------------------------------------------------------- a job's log

TIME_LIMIT = re.compile(r"DUE TO TIME LIMIT|TIME LIMIT:")
MEMORY = re.compile(r"exceeded memory limit|Exceeded job memory limit|oom[-_ ]kill|Out Of Memory", re.I)
STEPD_END = re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+(?: DUE TO (?P<why>[A-Z ]+?))? \*\*\*")


def last_attempt(path: Path) -> list[str] | None:
    """The lines of a job log's last attempt (requeued attempts append to one file); None without a log."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return last_attempt_lines(lines)


def last_attempt_lines(lines: list[str]) -> list[str]:
    """The lines from the last attempt's start line on (the job script writes one as it starts)."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith(MARK) and " started on " in ln]
    return lines[starts[-1]:] if starts else lines


def from_log(lines: list[str] | None) -> tuple[str | None, str]:
    """(cause, words) of how an attempt ended, from its log: a cause of ``jobs`` (``DONE`` for a
    pack that ended well, ``None``: the log does not say)."""
    if lines is None:
        return None, ""
    text = "\n".join(lines)
    if MEMORY.search(text):
        return jobs.OUT_OF_MEMORY, next(ln for ln in lines if MEMORY.search(ln)).strip()
    ends = list(STEPD_END.finditer(text))
    if ends:
        m = ends[-1]  # the step daemon's last word on the attempt
        why = (m.group("why") or "").strip()
        return {"TIME LIMIT": jobs.TIMED_OUT, "NODE FAILURE": jobs.NODE_FAILURE, "PREEMPTION": jobs.PREEMPTED,
                "JOB REQUEUE": jobs.REQUEUED}.get(why, jobs.CANCELLED), m.group(0).strip("* ")
    if TIME_LIMIT.search(text):
        return jobs.TIMED_OUT, next(ln for ln in lines if TIME_LIMIT.search(ln)).strip()
    ours = [ln for ln in lines if MARK in ln]
    if ours and "DONE:" in ours[-1]:
        return jobs.DONE, ours[-1]
    errors = [ln for ln in lines if ln.startswith("Error:") or "Traceback" in ln]
    if errors:
        return jobs.FAILED, errors[-1].strip()
    return None, ""


# --------------------------------------------------------------------------- one view per job


def view(job_id: str, j: SlurmJob | None, log_lines: list[str] | None, controller: bool) -> JobView:
    """One job's ``JobView`` from SLURM's record (``j``; None when SLURM has forgotten it) and its log."""
    cause, words = from_log(log_lines)
    if j is None:
        if cause == jobs.DONE:
            return JobView(SLURM, jobs.DONE, job_id, words)
        if cause is not None and cause != jobs.REQUEUED:
            return JobView(SLURM, jobs.ENDED, job_id, words, cause)
        if not controller:  # nothing to conclude: it may well be waiting
            return JobView(SLURM, jobs.QUEUED, job_id, "SLURM did not answer")
        if log_lines is None:
            return JobView(SLURM, jobs.ENDED, job_id, "SLURM no longer knows this job and it left no log: it never started "
                           "(cancelled, or it could not write its log)", jobs.CANCELLED)
        return JobView(SLURM, jobs.ENDED, job_id, "SLURM no longer knows this job; its log does not say how it ended", jobs.FAILED)
    s, r, n = j.state, j.reason, j.restarts
    if s == "PENDING":
        if r == "DependencyNeverSatisfied":
            return JobView(SLURM, jobs.ENDED, job_id, r, jobs.NEVER, n)
        if r.startswith("JobHeld"):
            return JobView(SLURM, jobs.HELD, job_id, r, retries=n)
        if n:
            return JobView(SLURM, jobs.REQUEUED, job_id, r, retries=n)
        return JobView(SLURM, jobs.WAITING if r == "Dependency" else jobs.QUEUED, job_id, r)
    if s in ("REQUEUED", "REQUEUE_FED"):
        return JobView(SLURM, jobs.REQUEUED, job_id, r, retries=n)
    if s in ("REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"):
        return JobView(SLURM, jobs.HELD, job_id, r or s, retries=n)
    if s in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"):
        return JobView(SLURM, jobs.RUNNING, job_id, r, retries=n)
    if s in ("SUSPENDED", "STOPPED"):
        return JobView(SLURM, jobs.QUEUED, job_id, s.lower(), retries=n)
    if s == "COMPLETED":
        return JobView(SLURM, jobs.DONE, job_id, words, retries=n)
    fixed = {"TIMEOUT": jobs.TIMED_OUT, "OUT_OF_MEMORY": jobs.OUT_OF_MEMORY, "NODE_FAIL": jobs.NODE_FAILURE, "PREEMPTED": jobs.PREEMPTED,
             "DEADLINE": jobs.TIMED_OUT, "BOOT_FAIL": jobs.NODE_FAILURE}
    if s in fixed:
        return JobView(SLURM, jobs.ENDED, job_id, words or s, fixed[s], n)
    if r == "DependencyNeverSatisfied":
        return JobView(SLURM, jobs.ENDED, job_id, r, jobs.NEVER, n)
    # CANCELLED, FAILED: without cgroups a memory kill shows as FAILED (JobLaunchFailure) and a
    # time-limit kill after the pack stopped itself may show as either; the log says which
    if cause in (jobs.OUT_OF_MEMORY, jobs.TIMED_OUT, jobs.NODE_FAILURE, jobs.PREEMPTED):
        return JobView(SLURM, jobs.ENDED, job_id, words, cause, n)
    return JobView(SLURM, jobs.ENDED, job_id, words or f"{s} ({r})" if r else words or s, jobs.CANCELLED if s == "CANCELLED" else jobs.FAILED, n)


def cell_views(folder: Path) -> tuple[dict[str, JobView], str | None]:
    """{cell name: the view of the latest job that trains it} for a grid's SLURM job folder, and
    a line to show when the scheduler could not be asked (None when it answered)."""
    subs = read_jobs(folder)
    if not subs:
        return {}, None
    ids = [s[k] for s in subs for k in ("prepare", "report") if s.get(k)] + [p["job"] for s in subs for p in s["packs"]]
    known, answered = scheduler_jobs(ids)
    names = {s[k]: s.get(f"{k}_name", "") for s in subs for k in ("prepare", "report") if s.get(k)}
    names.update({p["job"]: p["name"] for s in subs for p in s["packs"]})
    # a job id SLURM reports under another name (or another user's) is not ours: a restarted controller reuses ids
    known = {k: v for k, v in known.items() if not names.get(k) or v.name == names[k]}
    out: dict[str, JobView] = {}
    for s in subs:  # oldest first: a later submission's job is the one that trains the cell now
        prep = view(s["prepare"], known.get(s["prepare"]), last_attempt(log_path(folder, s.get("prepare_name", ""), s["prepare"])), answered)
        for p in s["packs"]:
            v = view(p["job"], known.get(p["job"]), last_attempt(log_path(folder, p["name"], p["job"])), answered)
            never = v.phase == jobs.ENDED and (v.cause == jobs.NEVER or (prep.phase == jobs.ENDED and v.reason.startswith("SLURM no longer knows this job and it left no log")))
            if never:  # say why it could never start: its prepare job's end
                v = JobView(SLURM, jobs.ENDED, v.job, f"its prepare job {prep.job} ended: {prep.cause or prep.phase}"
                            + (f" ({prep.reason})" if prep.reason else ""), jobs.NEVER, v.retries)
            for cell in p["cells"]:
                out[cell] = v
    return out, None if answered else "SLURM's controller did not answer (squeue): the states below are the runs' own"


def active_cells(folder: Path) -> dict[str, str]:
    """{cell name: job id} of the cells whose latest pack job SLURM will still run (pending,
    running, requeued): a new submission leaves them to it."""
    views, _ = cell_views(folder)
    return {cell: v.job for cell, v in views.items() if v.active or v.phase == jobs.HELD}
