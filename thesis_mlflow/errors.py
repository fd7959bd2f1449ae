"""The project's own exceptions: what went wrong in terms a user can act on.

The CLI (``steps/_common.user_errors``) shows a ``UserError`` as one line and a non-zero exit;
anything else (a ``ValueError`` from a bug included) keeps its traceback, because it is a bug.
The classes that stand for bad values also derive from ``ValueError`` / ``FileNotFoundError``,
so library callers may catch them the standard way.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can act on; shown as one line, exit 1 unless ``exit_code`` says otherwise."""


class BadSetting(UserError, ValueError):
    """A setting (option, spec field, grid YAML key) outside what is allowed; the message lists what is."""


class BadInput(UserError, ValueError):
    """An input that is not what the step needs: a file of the wrong format or vect, a run of another step, an experiment or grid with no such runs."""


class MissingInput(UserError, FileNotFoundError):
    """An input file that does not exist where it was looked for."""


class RunConflict(UserError, ValueError):
    """A run that already holds other settings than the ones asked for: resuming would mix them."""


class StepFailed(UserError):
    """Work this command depends on failed (a cell of a pack, an upstream step in another job); the runs say why."""


class Diverged(UserError):
    """Training produced non-finite outputs (NaN or infinite test scores): the run is marked failed, its scores never ranked."""


class Unavailable(UserError, RuntimeError):
    """Something this machine lacks or could not start: CUDA, an MPS daemon, PostgreSQL, the tracking server."""


class LeaseHeld(UserError):
    """Another live process works on this run (or grid); nothing was started or logged."""

    exit_code = 75  # EX_TEMPFAIL: the grid driver tells "trained elsewhere" from "failed" by it

    def __init__(self, what: str, holder: str):
        self.holder = holder
        super().__init__(f"{what} is being worked on by another process ({holder}); not starting a second one")


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: Condor evicting or removing a pack): raised in
    every training thread at its next step, so the pack ends in seconds; as a Ctrl-C, each run
    then ends KILLED and resumes from its last checkpoint."""


class LeaseLost(UserError):
    """This process no longer holds its lease (another took over after it looked dead): it stops
    without marking anything finished."""

    exit_code = 75
