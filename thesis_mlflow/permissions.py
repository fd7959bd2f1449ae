"""Files and folders only their owner may touch, on a machine shared with strangers.

A server root under ``/tmp`` (or any folder others can write) could be prepared by someone
else: a planted ``server.pid`` that ``--stop`` would signal, a ``server.url`` that jobs would
send the login to, a symlink where a secret is about to be written. So a root is used only
when every folder of it that we create is created by us (``mkdir`` fails when it exists), and
every existing one belongs to us and is writable by nobody else.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from thesis_mlflow.errors import UserError


class UnsafePath(UserError):
    """A folder or file another user owns or can write, where a secret or a pid would go."""


def check_private(path: Path, what: str = "folder") -> None:
    """``path`` exists, is no symlink, belongs to this user and is writable by nobody else."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; the {what} must be a real folder of yours")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); choose a {what} of your own")
    if st.st_mode & 0o022:
        raise UnsafePath(f"{path} is writable by group or others (mode {oct(st.st_mode & 0o777)}); chmod go-w it or choose another {what}")


def secure_dir(path: str | Path, what: str = "root") -> Path:
    """Create ``path`` (mode 0700, each missing folder by us) or check an existing one; refuse a
    folder that is not ours or that others can write, naming why."""
    path = Path(os.path.abspath(path))
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    if missing:
        parent_st = os.lstat(p)
        sticky_shared = parent_st.st_mode & stat.S_ISVTX and parent_st.st_mode & 0o002  # /tmp: mkdir there is ours or fails
        if not sticky_shared:
            check_private(p, f"{what}'s parent folder")
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)  # fails if someone else made it meanwhile: then it is checked below
        except FileExistsError:
            pass
    check_private(path, what)
    for d in reversed(missing[1:]):  # intermediate folders we meant to create
        check_private(d, f"{what}'s parent folder")
    return path


def check_ancestors(path: str | Path, what: str = "folder") -> None:
    """No folder above ``path`` can be replaced by another user: each belongs to this user or to
    root and is writable by nobody else, or is sticky (``/tmp``: an entry there is renamed or
    removed only by its owner). Checked on the real path (a symlinked home is followed once, here)."""
    real = Path(os.path.realpath(path))
    me = os.getuid()
    for d in reversed(real.parents):
        st = os.stat(d)
        if st.st_uid not in (me, 0):
            raise UnsafePath(f"{d}, a folder above the {what} {path}, belongs to uid {st.st_uid}: its owner could replace the {what}; "
                             "choose a folder under your own home or project space")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafePath(f"{d}, a folder above the {what} {path}, is writable by group or others (mode {oct(st.st_mode & 0o777)}): "
                             f"they could replace the {what}; choose another place")


def private_dir(path: str | Path, what: str = "folder") -> Path:
    """``secure_dir``, stricter, for a folder of files only we may read (job scripts, the jobs
    record, logs): an existing one with any group or other permission is refused (not only one
    others can write), and so is one below a folder another user could swap it in."""
    path = secure_dir(path, what)
    mode = os.lstat(path).st_mode & 0o777
    if mode & 0o077:
        raise UnsafePath(f"{path} is open to group or others (mode {oct(mode)}); the {what} must be private: chmod 700 it or choose another")
    check_ancestors(path, what)
    return path


@contextlib.contextmanager
def opened_dir(folder: str | Path, what: str = "folder") -> Iterator[int]:
    """A file descriptor of ``folder`` opened without following a symbolic link, checked to be
    ours and private: files written or read through it (``write_in``, ``read_in``) stay in this
    folder even if its name is swapped for a link meanwhile."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise UnsafePath(f"{folder}: the {what} is not a real folder of yours any more ({e.strerror}); nothing was written") from e
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise UnsafePath(f"{folder}: the {what} is not private to you (uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}); nothing was written")
        yield fd
    finally:
        os.close(fd)


def write_in(dir_fd: int, name: str, text: str) -> None:
    """Write ``name`` (0600) in the folder ``dir_fd`` atomically, never through a link."""
    tmp = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # left by a crashed write of ours (same pid)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_in(dir_fd: int, name: str) -> str | None:
    """The text of ``name`` in the folder ``dir_fd`` (None when absent), never through a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        return f.read()


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (0600), atomically, never through a link."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_in(dir_fd, path.name, text)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Files and folders this thread's code creates meanwhile are its owner's alone (umask 077).

    The umask is process-wide: use it around short writes of one thread (a DAG and its submit
    files), not around work other threads do at the same time."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)
