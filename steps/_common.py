"""Shared helpers of the entry points: bool parsing, errors as clean CLI failures, logging.

Light on purpose (click and the standard library only): ``thesis-mlflow --help`` and a refused
option answer before torch, MLflow or pandas are imported.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

# Running ``python steps/x.py`` (not -m) must still find the library next to it.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Bool(click.ParamType):
    """``true``/``false`` as MLflow passes them (also 1/0, yes/no), refusing anything else."""

    name = "true|false"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        v = str(value).strip().lower()
        if v in ("true", "1", "yes", "y", "t"):
            return True
        if v in ("false", "0", "no", "n", "f"):
            return False
        self.fail(f"{value!r} is not a boolean; allowed values: true, false", param, ctx)


BOOL = Bool()


def choice(*values):
    """A click Choice whose error lists the allowed values (case-sensitive, as logged)."""
    return click.Choice([str(v) for v in values], case_sensitive=False)


def configure_logging(level: int = logging.INFO) -> None:
    """Library code logs; the steps decide how it is shown."""
    # One progress bar per downloaded artifact drowns the useful lines of a grid or report.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class UserFailure(click.ClickException):
    """A one-line error with the exit code its cause asks for (75: leased elsewhere)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def user_errors(fn):
    """Turn the project's ``UserError``s (bad settings and inputs, runs leased elsewhere: 75, ...;
    see thesis_mlflow/errors.py) into a one-line error and a non-zero exit. Anything else is a
    bug and keeps its traceback, a ``ValueError`` included."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        configure_logging()
        from thesis_mlflow.errors import UserError

        try:
            return fn(*a, **kw)
        except UserError as e:
            raise UserFailure(str(e), getattr(e, "exit_code", 1)) from e
        except Exception as e:
            stranger = _cause(e, "NotOurServer")  # raised deep in urllib3, wrapped by MLflow: still the user's to act on
            if stranger is None:
                raise
            raise UserFailure(str(stranger), 1) from e

    return wrapper


def _cause(e: BaseException, name: str) -> BaseException | None:
    """The exception of class ``name`` in ``e``'s chain of causes, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if type(e).__name__ == name:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
