"""Each run's own log: a failed cell's cause is one click away in the MLflow UI.

While a step's run is active, every log record of its thread (the library's and MLflow's) is
also written to a file (``RunLog``) that ``runs`` uploads as ``logs/<step>.log``: when the caller
asks (``runs.upload_current_log``, each epoch of a train run, at most every ``runs.LOG_EVERY_S``),
and at the end, FAILED or not. A failure adds its traceback to the log and tags the run
``error.class`` and a one-line ``error.message``; ``grid status`` groups failed cells by them.
No MLflow here: the file, its thread and the root logger's level.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
from pathlib import Path

ERROR_CLASS = "error.class"
ERROR_MESSAGE = "error.message"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# Run logs open in several threads at once (cells side by side, upstream runs two at a time)
# share the root logger's level: counted, so the last to close restores the caller's.
_ROOT_LEVEL = {"open": 0, "old": logging.NOTSET}
_ROOT_LEVEL_LOCK = threading.Lock()


class RunLog:
    """The log file of one step's run (``runs.upload_log`` uploads it)."""

    def __init__(self, step: str):
        self.step = step
        self.dir = tempfile.TemporaryDirectory(prefix="thesis-runlog-")
        self.path = Path(self.dir.name) / f"{step}.log"
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        self.uploaded = time.monotonic()  # when it last went up, or opened (monotonic): ``upload_current_log`` spaces its uploads
        thread = threading.get_ident()  # cells trained side by side in threads: each run logs its own thread's records
        self.handler.addFilter(lambda record: record.thread == thread)
        root = logging.getLogger()
        with _ROOT_LEVEL_LOCK:  # INFO while any run log is open; the caller's level back once the last closes
            if _ROOT_LEVEL["open"] == 0:
                _ROOT_LEVEL["old"] = root.level
            _ROOT_LEVEL["open"] += 1
            if root.level > logging.INFO or root.level == logging.NOTSET:
                root.setLevel(logging.INFO)
        root.addHandler(self.handler)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def traceback(self, e: BaseException) -> None:
        """The exception's traceback into the log file."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        with _ROOT_LEVEL_LOCK:
            _ROOT_LEVEL["open"] -= 1
            if _ROOT_LEVEL["open"] == 0:
                root.setLevel(_ROOT_LEVEL["old"])
        self.handler.close()
        self.dir.cleanup()


def one_line(e: BaseException, limit: int = 250) -> str:
    """The exception's message on one line (MLflow tag values stay readable in the runs table)."""
    text = " ".join(str(e).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(e).__name__)


_local = threading.local()


def stack() -> list[RunLog]:
    """This thread's active step logs, innermost last."""
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack
