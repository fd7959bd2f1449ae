"""Every value that reaches a scheduler's file, checked or quoted by one rule.

A batch script or submit file is code the scheduler runs as the user on every node of the grid,
and its options are parsed by the scheduler before any of our code runs: a grid name with a
newline becomes a line of shell in a SLURM script (and ends sbatch's reading of ``#SBATCH``
lines, dropping the ``--export`` allow-list), a value with a space becomes two options. So:

- **names** (the grid's name, SLURM partitions and accounts, Condor's job category): letters,
  digits and ``._-`` only (``check_name``), refused otherwise at load time, naming the key and
  the character;
- **paths**: any character but control characters and line separators (``check_path``); then
  written in each scheduler's own quoting: shell quoting in a SLURM script's body
  (``shlex.quote``), no blank or quote at all in a ``#SBATCH`` value (``check_directive``),
  HTCondor's new ``arguments`` / ``environment`` syntax (``condor_arguments``, ``condor_environment``);
- **sbatch options** given by the user (``slurm.extra``): one option per item, parsed as sbatch's
  getopt parses it (long options by unambiguous prefix, short options with attached values,
  grouped flags), refused when it sets what the grid sets itself (``sbatch_option``).
"""

from __future__ import annotations

import re
import unicodedata

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.secret import carries_secret, looks_secret

NAME_MAX = 64  # SLURM's and HTCondor's job names and file names stay well within their limits with a suffix
NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$")
# scheduler words: SLURM allows a comma-separated list of partitions, accounts are names
SLURM_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._,+-]{0,127}$")


def _first_bad(value: str, ok) -> str | None:
    for ch in value:
        if not ok(ch):
            return ch
    return None


def _describe(ch: str) -> str:
    if ch == " ":
        return "a space"
    if ch.isprintable():
        return repr(ch)
    return f"{ch!r} ({unicodedata.name(ch, 'a control character').lower()})"


def check_name(value, key: str) -> str:
    """A name that becomes part of job names, file names and tags: ``NAME`` or a one-line error."""
    if not isinstance(value, str) or not value:
        raise BadSetting(f"{key} must be a name of letters, digits and ._- (at most {NAME_MAX}); got {value!r}")
    if NAME.match(value):
        return value
    if len(value) > NAME_MAX:
        why = f"is {len(value)} characters long (at most {NAME_MAX})"
    elif not value[0].isascii() or not value[0].isalnum():
        why = f"starts with {_describe(value[0])} (a letter or digit first)"
    else:
        why = f"holds {_describe(_first_bad(value, lambda c: c.isascii() and (c.isalnum() or c in '._-')))}"
    raise BadSetting(f"{key} {value!r} {why}: names that reach job scripts and file names may hold letters, digits and ._- only")


def _is_control(ch: str) -> bool:
    # Cc: C0/C1 controls (newline, \x85); Zl/Zp: the unicode line and paragraph separators; Cf: invisible format characters
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cf")


def check_path(value, key: str) -> str:
    """A path that is written into job files (quoted there): no control character or line separator."""
    if not isinstance(value, str) or not value.strip():
        raise BadSetting(f"{key} must be a path; got {value!r}")
    bad = _first_bad(value, lambda c: not _is_control(c))
    if bad is not None:
        raise BadSetting(f"{key} {value!r} holds {_describe(bad)}: a path written into job files may not hold control characters")
    return value


def check_slurm_word(value, key: str) -> str | None:
    """A partition, account, QoS or GPU type (``None`` stays ``None``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not SLURM_WORD.match(value):
        bad = _first_bad(value, lambda c: c.isascii() and (c.isalnum() or c in "._,+-")) if isinstance(value, str) and value else None
        raise BadSetting(f"{key} must be a name without spaces (letters, digits, ._,+-), or null; got {value!r}"
                         + (f": it holds {_describe(bad)}" if bad else ""))
    return value


def _directive_char(c: str) -> bool:
    """A character sbatch reads as it is in an ``#SBATCH`` line: it splits those lines at blanks
    and reads quotes and backslashes, so printable ASCII but for those."""
    return c.isascii() and c.isprintable() and not c.isspace() and c not in "'\"\\"


def check_directive(value: str, key: str) -> str:
    """A value written into a ``#SBATCH`` line: no blank, quote or control character."""
    check_path(value, key)
    bad = _first_bad(value, _directive_char)
    if bad is not None:
        raise BadSetting(f"{key} {value!r} holds {_describe(bad)}: a value in an #SBATCH line may not hold blanks, quotes or "
                         "non-ASCII characters (choose a path without them)")
    return value


def check_condor_value(value: str, key: str, empty: bool = False) -> str:
    """A value written into a submit file (one line each; ``$(`` starts a macro there)."""
    if not (empty and value == ""):
        check_path(value, key)
    if "$(" in value or "$$(" in value:
        raise BadSetting(f"{key} {value!r} holds '$(', which HTCondor expands as a macro in submit files")
    return value


# --------------------------------------------------------------------------- HTCondor's quoting


def _condor_word(arg: str) -> str:
    """One argument in the new syntax: double quotes doubled; blanks and single quotes inside
    single quotes, with single quotes doubled."""
    arg = arg.replace('"', '""')
    if arg == "" or any(c.isspace() for c in arg) or "'" in arg:
        return "'" + arg.replace("'", "''") + "'"
    return arg


def condor_arguments(argv: list[str], raw_tail: str = "") -> str:
    """HTCondor's new ``arguments`` syntax (``"a 'b c' d"``): every argument kept whole, whatever
    it holds. ``raw_tail``: a macro (``$(args)``) appended as it is, its value quoted by
    ``condor_words``."""
    for a in argv:
        check_condor_value(a, "an argument of a job", empty=True)
    return '"' + " ".join([*(_condor_word(a) for a in argv), *([raw_tail] if raw_tail else [])]) + '"'


def condor_words(argv: list[str]) -> str:
    """The inside of a new-syntax arguments string (for a DAG variable expanded into one)."""
    return condor_arguments(argv)[1:-1]


def condor_environment(env: dict[str, str]) -> str:
    """HTCondor's new ``environment`` syntax (``"A=1 B='x y'"``), each value whole."""
    out = []
    for k, v in env.items():
        v = str(v)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise BadSetting(f"environment variable name {k!r} is not a variable name")
        if v.startswith("$(") and v.endswith(")") and re.fullmatch(r"\$\([A-Za-z_]+\)", v):
            out.append(f"{k}={v}")  # a DAG variable of ours (run_id), expanded by HTCondor
            continue
        check_condor_value(v, f"the job environment's {k}", empty=True)
        out.append(f"{k}={_condor_word(v)}")
    return '"' + " ".join(out) + '"'


# --------------------------------------------------------------------------- sbatch's options

# The options the job scripts set themselves, long and short (an ``extra`` item may not set them
# again: the chain, the logs, the requeue and the environment are what the grid's status and
# safety rest on); and the short flags that take no value (after them getopt reads more options).
OWN_LONG = ("job-name", "output", "error", "open-mode", "dependency", "requeue", "no-requeue", "signal", "export", "export-file", "chdir",
            "kill-on-invalid-dep", "parsable", "wrap", "get-user-env", "time", "mem", "mem-per-cpu", "mem-per-gpu", "cpus-per-task",
            "cpus-per-gpu", "gres", "gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket", "partition", "account", "qos", "array",
            "input", "uid", "gid", "hold", "test-only", "wait", "batch", "help", "usage", "version")
OWN_SHORT = "JoedDtcGpAqaiHW"
SHORT_FLAGS = "HhkOQsuvVW"


def sbatch_option(item, key: str) -> str:
    """One ``slurm.extra`` item as sbatch would read it from an ``#SBATCH`` line (``#SBATCH``
    prefix allowed): exactly one option, ``--name=value``, ``--flag``, ``-Xvalue`` or ``-X``."""
    if not isinstance(item, str) or not item.strip():
        raise BadSetting(f"{key} must be an sbatch option such as --constraint=a100; got {item!r}")
    opt = item.strip().removeprefix("#SBATCH").strip()
    bad = _first_bad(opt, _directive_char)
    if bad is not None:
        raise BadSetting(f"{key} must be one sbatch option per item, without blanks or quotes (--constraint=a100, not "
                         f"'--constraint a100'); {item!r} holds {_describe(bad)}")
    if opt.startswith("--"):
        name = opt[2:].split("=", 1)[0]
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise BadSetting(f"{key} must be one sbatch option such as --constraint=a100; got {item!r}")
        # getopt_long takes any unambiguous prefix of a long option: --exp=ALL is --export=ALL
        own = [o for o in OWN_LONG if o == name or o.startswith(name)]
        if own:
            raise BadSetting(f"{key} sets --{own[0]}, which the grid sets itself; use the slurm: keys (partition, account, qos, time, "
                             "mem, cpus_per_job, gpus_per_job, export) or leave it to the grid")
    elif re.match(r"-[A-Za-z]", opt):
        letter, rest = opt[1], opt[2:]
        if letter in OWN_SHORT:
            raise BadSetting(f"{key} sets -{letter}, which the grid sets itself; use the slurm: keys (partition, account, qos, time, "
                             "mem, cpus_per_job, gpus_per_job) or leave it to the grid")
        if letter in SHORT_FLAGS and rest:
            raise BadSetting(f"{key} must be one sbatch option per item; {item!r} groups -{letter} with more options ({rest!r})")
    else:
        raise BadSetting(f"{key} must be one sbatch option such as --constraint=a100; got {item!r}")
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", opt)
    if carries_secret(opt) or any(looks_secret(w) for w in words if w.isupper() or "_" in w) or re.search(r"(?i)passw|token|secret", opt):
        raise BadSetting(f"{key} looks like it carries a secret ({opt!r}); job scripts are readable by the cluster's admins and stay in "
                         "its records: give MLflow credentials through ~/.mlflow/credentials")
    return opt
