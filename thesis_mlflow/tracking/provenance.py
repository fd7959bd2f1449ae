"""Which code, environment and device made a run, recorded in one place on every run.

``provenance_tags(step)`` is what ``runs.step_run`` sets on each step's run (train, binning, VQ-VAE,
compare, report, generate) and ``grid.runs`` on a grid's parent: MLflow's own tags where they
exist (``mlflow.source.git.commit``, ``mlflow.source.name``, ``mlflow.user``) and the project's
for the rest (``code.dirty``, ``env.python`` / ``env.torch`` / ``env.cuda`` / ``env.mlflow`` /
``env.numpy``, ``env.threads`` (torch's CPU threads), ``device``, ``host``). A tree with uncommitted
changes also gets its diff against the commit as the artifact ``provenance/diff.patch``. The data
file's digest and the run's random stream are logged where the run reads them (``data.sha256``,
``spec.RunStream``).

The code is the checkout this package was imported from (an editable install, as ``make setup``
makes); an installed copy outside git records no commit and says so. MLflow-free.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from thesis_mlflow.errors import BadSetting

CHECKOUT = Path(__file__).resolve().parents[2]  # the code this package was imported from
COMMIT, DIRTY = "mlflow.source.git.commit", "code.dirty"
DIFF_ARTIFACT = "provenance/diff.patch"


@dataclass(frozen=True)
class Code:
    commit: str | None  # None: not a git checkout
    dirty: bool
    changed: tuple[str, ...]  # files with uncommitted changes (tracked or not ignored)
    diff: str  # `git diff HEAD` plus the untracked files' names

    @property
    def label(self) -> str:
        return "no git checkout" if self.commit is None else self.commit[:12] + ("-dirty" if self.dirty else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True).stdout


@functools.lru_cache(maxsize=8)
def code_state(root: Path = CHECKOUT) -> Code:
    """The commit of ``root`` and whether its tree has uncommitted changes (once per process)."""
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return Code(None, False, (), "")
    changed = tuple(line[3:] for line in status.splitlines() if line.strip())
    diff = _git(root, "diff", "HEAD") if changed else ""
    untracked = [c for line, c in zip(status.splitlines(), changed, strict=False) if line.startswith("??")]
    if untracked:
        diff += "".join(f"# untracked: {u}\n" for u in untracked)
    return Code(commit, bool(changed), changed, diff)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_name() -> str:
    """The GPU this process uses (name and driver) when torch has CUDA up, else the CPU model."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        name = torch.cuda.get_device_name()
        try:
            import pynvml

            pynvml.nvmlInit()
            name += f", driver {pynvml.nvmlSystemGetDriverVersion()}"
        except Exception:  # noqa: BLE001 - the driver version is a nicety
            pass
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


def environment() -> dict[str, str]:
    torch = sys.modules.get("torch")
    cuda = (torch.version.cuda or "none") if torch is not None else "not loaded"
    out = {"env.python": platform.python_version(), "env.torch": _version("torch"), "env.cuda": cuda,
           "env.mlflow": _version("mlflow"), "env.numpy": _version("numpy")}
    if torch is not None:  # CPU results depend on it (the order of sums in a matmul): a cell remade with other threads differs
        out["env.threads"] = str(torch.get_num_threads())
    return out


def provenance_tags(step: str, root: Path = CHECKOUT) -> dict[str, str]:
    """The provenance tags of a run of ``step`` made by this process."""
    c = code_state(root)
    out = {"mlflow.source.name": f"thesis-mlflow {step}", "mlflow.user": getpass.getuser(), "host": socket.gethostname(),
           DIRTY: "true" if c.dirty else "false", "device": device_name(), **environment()}
    if c.commit:
        out[COMMIT] = c.commit
    return out


def code_label(tags: dict) -> str:
    """Which code made a run, from its tags: the commit (12 characters, ``-dirty`` with
    uncommitted changes), or ``unknown`` for runs logged before provenance was recorded."""
    commit = tags.get(COMMIT)
    if not commit or DIRTY not in tags:
        return "unknown"
    return commit[:12] + ("-dirty" if tags[DIRTY] == "true" else "")


def check_clean(allow_dirty: bool, root: Path = CHECKOUT) -> Code:
    """A grid's code must be committed, so every cell says which code made it; with
    ``allow_dirty`` the diff is recorded instead. Raises ``BadSetting`` naming the files."""
    c = code_state(root)
    if c.dirty and not allow_dirty:
        shown = ", ".join(c.changed[:5]) + (f" and {len(c.changed) - 5} more" if len(c.changed) > 5 else "")
        raise BadSetting(f"the code in {root} has uncommitted changes ({shown}): a grid whose cells ran different code looks like "
                         "one experiment. Commit them, or pass --allow-dirty (the diff is then recorded on the grid's parent run)")
    return c
