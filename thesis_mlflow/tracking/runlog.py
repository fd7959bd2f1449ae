"""Each run keeps its own log: a failed cell's cause is one click away in the MLflow UI.

While a step's run is active, every log record of its thread (the library's and MLflow's)
is also written to a file that ``runs`` uploads as ``logs/<step>.log``: when the caller asks
(``runs.upload_current_log``, each epoch of a train run), and at the end, FAILED or not. This
module only keeps the file; it does not talk to MLflow. A failure adds its traceback to
the log and tags the run ``error.class`` and a one-line ``error.message``; ``grid status``
groups failed cells by them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

ERROR_CLASS = "error.class"
ERROR_MESSAGE = "error.message"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """The log file of one step's run, and its uploads."""

    def __init__(self, step: str):
        self.step = step
        self.dir = tempfile.TemporaryDirectory(prefix="thesis-runlog-")
        self.path = Path(self.dir.name) / f"{step}.log"
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        thread = threading.get_ident()  # cells trained side by side in threads: each run logs its own thread's records
        self.handler.addFilter(lambda record: record.thread == thread)
        root = logging.getLogger()
        self._old_level = root.level
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
        root.setLevel(self._old_level)
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
