"""Run at start-up by every process of a tracking server that ``server.start`` launches.

TCP_NODELAY on the server's connections. With ``--workers`` > 1, uvicorn (0.54, the latest)
binds the listening socket itself with ``proto`` 0; the accepted sockets inherit it, and
asyncio turns Nagle's algorithm off only for sockets that say ``IPPROTO_TCP``. Each response
on a kept-alive connection then waits for the client's delayed ACK: ~40 ms per MLflow call
on Linux instead of a few (measured here: 55 ms against 8 ms for the same request; a cell makes
~50 calls). Upstream: Kludex/uvicorn#3149 (open). The fix asks the socket what it is instead
of trusting ``proto``; everything else about the server is unchanged.

Any ``sitecustomize`` this one shadows (a distribution's own) is run afterwards.
"""

import asyncio.base_events as _base_events
import socket as _socket


def _set_nodelay(sock):
    if sock.family in (_socket.AF_INET, _socket.AF_INET6) and sock.type == _socket.SOCK_STREAM:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


if hasattr(_socket, "TCP_NODELAY"):
    _base_events._set_nodelay = _set_nodelay


def _chain() -> None:
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
