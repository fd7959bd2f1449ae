"""The project's own exceptions: what went wrong in terms a user can act on.

The CLI shows a ``UserError`` (and ``ValueError`` / ``FileNotFoundError`` of bad input) as one
line and a non-zero exit; anything else keeps its traceback, because it is a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state the user must resolve; shown as one line."""


class LeaseHeld(UserError):
    """Another live process works on this run (or grid); nothing was started or logged."""

    exit_code = 75  # EX_TEMPFAIL: the grid driver tells "trained elsewhere" from "failed" by it

    def __init__(self, what: str, holder: str):
        self.holder = holder
        super().__init__(f"{what} is being worked on by another process ({holder}); not starting a second one")


class LeaseLost(UserError):
    """This process no longer holds its lease (another took over after it looked dead): it stops
    without marking anything finished."""

    exit_code = 75
