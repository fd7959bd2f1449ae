"""No login to a stranger: on loopback, the jobs check who answers before they send a byte.

On 127.0.0.1 the tracking server speaks plain HTTP, and MLflow sends the jobs' login with every
request to whatever listens on the tracking URI's port. On a shared login node anyone can bind
that port while the server is stopped, restarting or crashed, and collect the login from every
job retrying meanwhile. So every new loopback connection a process of this project opens is
checked right after ``connect`` and before anything is sent: the socket at the other end must
belong to a process of this user (the server ``serve`` started, an ``mlflow ui`` of one's own,
one's own ``ssh -L`` tunnel). Another user's process, or one whose owner we cannot see (which is
what another user's looks like to a non-root process), gets the connection closed and the
request fails at once (not retried) naming what answers there. A listener that is gone by the time we
look (the server killed or restarting as we connected) is a refused connection: retried, and checked again. The threat is the other users
of a shared machine; a process of one's own could read the credentials file anyway. Beyond loopback the server speaks HTTPS and the jobs verify its certificate
(``MLFLOW_TRACKING_SERVER_CERT_PATH``, see ``thesis_mlflow.server.tls``): the same promise by TLS.

Installed by ``thesis_mlflow.tracking.runs`` (so in every job, grid driver and report process) as a
wrapper of urllib3's ``HTTPConnection.connect``, which both MLflow's client and its artifact
uploads use. Kept-alive connections are checked once, when opened (~10 ms).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class NotOurServer(Exception):
    """Something other than this user's mlflow server answers on the tracking URI's port.

    Deliberately not an ``OSError``: urllib3 retries those (and would retry into the same
    stranger); this one ends the request at once."""


class ListenerGone(Exception):
    """The listener our connection reached closed before we could see whose it was: the server
    was stopping or crashing as we connected. Nothing was sent; the caller retries as after a
    refused connection, and that new connection is checked again."""


def describe_peer(port: int) -> tuple[bool, str]:
    """(ours, what answers) for the loopback ``port`` just connected to, judged by its listening
    socket: our connection waits in that socket's queue (a connection not yet accepted belongs to
    no process), and the kernel lets only sockets of one user share a port (SO_REUSEPORT), so its
    owner is who will read what we send. ``ListenerGone`` when no socket listens there any more
    (the connection is dead with it: no stranger can read it)."""
    import psutil

    owners = {c.pid for c in psutil.net_connections(kind="tcp")
              if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip in ("127.0.0.1", "0.0.0.0", "::", "::1")}
    if not owners:
        raise ListenerGone(f"no socket listens on port {port} any more")
    if None in owners:  # a listener whose process is not visible to us: another user's
        return False, f"a process of another user (port {port}; its owner is hidden from us)"
    what = []
    for pid in sorted(owners):
        try:
            proc = psutil.Process(pid)
            uid = proc.uids().real
            what.append((uid, f"pid {pid} ({' '.join(proc.cmdline())[:120] or proc.name()}) of uid {uid}"))
        except psutil.Error:
            return False, f"pid {pid} (gone)"
    strangers = [w for uid, w in what if uid != os.getuid()]
    return not strangers, (strangers or [w for _, w in what])[0]


def install() -> None:
    """Check every new loopback HTTP connection of this process (idempotent)."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.exceptions import NewConnectionError

    if getattr(HTTPConnection.connect, "_thesis_peer_check", False):
        return
    plain_connect = HTTPConnection.connect

    def connect(self) -> None:
        plain_connect(self)
        if isinstance(self, HTTPSConnection) or self.host not in LOOPBACK or os.environ.get("THESIS_MLFLOW_TRUST_LOOPBACK") == "1":
            return  # HTTPS verifies the certificate; other hosts are not on this machine
        sock, gone = self.sock, None
        try:
            ours, what = describe_peer(sock.getpeername()[1])
        except ListenerGone as e:  # a server stopping or restarting: a failed connection, retried like a refused one
            ours, what, gone = False, str(e), e
        except Exception as e:  # noqa: BLE001 - cannot tell who answers: do not send the login
            ours, what = False, f"an unidentifiable listener ({type(e).__name__})"
        if not ours:
            sock.close()
            self.sock = None
            if gone is not None:
                raise NewConnectionError(self, f"{self.host}:{self.port}: {what} (a server stopping or restarting); nothing was sent") from gone
            raise NotOurServer(f"{self.host}:{self.port} is answered by {what}, not by a process of yours: nothing was sent "
                               "(no login). Is the server running? `thesis-mlflow serve --root ROOT` restarts it, and refuses "
                               "while a stranger holds its port")

    connect._thesis_peer_check = True
    HTTPConnection.connect = connect
