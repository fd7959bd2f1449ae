"""The tracking server's start-up code (thesis_mlflow/server/site): TCP_NODELAY on the
connections of uvicorn's multi-worker listener, and a shadowed sitecustomize still run.
test_server.py checks that a real server's processes start with it; the latency it saves is
measured in benchmarks/server_latency.py."""

from __future__ import annotations

import os
import subprocess
import sys

from thesis_mlflow.server import process as server

# uvicorn's own listener of the multi-worker mode (Config.bind_socket, proto 0), served by
# asyncio as each worker serves it: is Nagle's algorithm off on the accepted connection?
ACCEPTED_NODELAY = """
import asyncio, socket
from uvicorn.config import Config

sock = Config(app=None, host="127.0.0.1", port=0).bind_socket()

async def main():
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Report(asyncio.Protocol):
        def connection_made(self, transport):
            got.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    srv = await loop.create_server(Report, sock=sock)
    _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    print(int(bool(await asyncio.wait_for(got, 30))))
    writer.close()
    srv.close()

asyncio.run(main())
"""


def _run(code: str, pythonpath: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_connections_of_a_uvicorn_bound_listener_get_tcp_nodelay():
    assert _run(ACCEPTED_NODELAY, None) == "0"  # uvicorn's bug (Kludex/uvicorn#3149): when fixed, the hook can go
    assert _run(ACCEPTED_NODELAY, server.site_path(None)) == "1"


def test_a_shadowed_sitecustomize_still_runs_and_pythonpath_is_kept(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS_RAN = True\n")
    path = server.site_path(str(theirs))
    assert path.split(os.pathsep) == [str(server.SERVER_SITE), str(theirs)]
    assert _run("import builtins, sys; print(getattr(builtins, 'THEIRS_RAN', False), sys.modules['sitecustomize'].__file__)", path) \
        == f"True {server.SERVER_SITE / 'sitecustomize.py'}"
