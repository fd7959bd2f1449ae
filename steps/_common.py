"""Shared helpers of the entry points: bool parsing, errors as clean CLI failures."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

# Running ``python steps/x.py`` (not -m) must still find the library next to it.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from thesis_mlflow.data import DataFormatError  # noqa: E402
from thesis_mlflow.tracking import configure_logging  # noqa: E402

log = logging.getLogger("steps")


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


def user_errors(fn):
    """Turn bad-input exceptions into a one-line error and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        configure_logging()
        try:
            return fn(*a, **kw)
        except (DataFormatError, ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def resolve(path: str | Path) -> Path:
    """Relative paths are taken against the working directory (``mlflow run .`` runs in the project)."""
    return Path(path).expanduser().resolve()
