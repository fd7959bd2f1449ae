"""``serve``: a real mlflow tracking server (SQLite or PostgreSQL, served artifacts, basic auth) for the grid's jobs."""

from __future__ import annotations

import os
import time

import click

from steps._common import user_errors
from thesis_mlflow import server
from thesis_mlflow.paths import resolve


@click.command("serve", help="Start an mlflow tracking server (SQLite store or PostgreSQL, served artifacts, login) under ROOT.")
@click.option("--root", default="mlflow-server", show_default=True, help="Folder for mlflow.db, artifacts/ and server.log (local disk!).")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to be reachable from worker nodes.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=5000, show_default=True, help="0 picks a free port.")
@click.option("--workers", type=click.IntRange(min=1), default=server.DEFAULT_WORKERS, show_default=True,
              help="Server processes; 4 took 36 jobs logging at once without a failure, 1 did not (README).")
@click.option("--allowed-hosts", default=None, help="MLflow 3 Host-header allow-list, e.g. 'login01.nikhef.nl:5000,localhost:5000'.")
@click.option("--backend-store-uri", default=None, help="Override the SQLite store, e.g. postgresql://user@host/mlflow.")
@click.option("--no-auth", is_flag=True, help="No login (a single-user laptop). Default: MLflow basic auth, admin password in ROOT.")
@click.option("--background", is_flag=True, help="Return once the server answers; stop it with --stop.")
@click.option("--stop", "stop_", is_flag=True, help="Stop the server started under ROOT.")
@user_errors
def main(root, host, port, workers, allowed_hosts, backend_store_uri, no_auth, background, stop_) -> None:
    root = resolve(root)
    existing = server.running(root)
    if stop_:
        if existing is None:
            click.echo(f"no server running under {root}")
            return
        existing.stop()
        click.echo(f"stopped mlflow server {existing.uri} (pid {existing.pid})")
        return
    if existing is not None:
        click.echo(f"mlflow server already running: {existing.uri} (pid {existing.pid})")
        click.echo(f"export MLFLOW_TRACKING_URI={existing.uri}")
        return
    srv = server.start(root, host, port, workers, allowed_hosts, backend_store_uri=backend_store_uri, auth=not no_auth)
    click.echo(f"mlflow server {srv.uri} (pid {srv.pid}); store {backend_store_uri or root}")
    if not no_auth:
        path, what = server.install_client_credentials(root)
        click.echo(f"login required (MLflow basic auth): user admin, password in {root / server.CREDENTIALS} (0600)")
        click.echo(f"client credentials {path}: {what}")
    click.echo(f"export MLFLOW_TRACKING_URI={srv.uri}")
    if background:
        return
    try:
        while srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
        if os.path.exists(root / "server.pid"):
            (root / "server.pid").unlink()


if __name__ == "__main__":
    main()
