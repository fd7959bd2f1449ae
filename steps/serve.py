"""``serve``: a real mlflow tracking server (SQLite or PostgreSQL, served artifacts, basic auth) for the grid's jobs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from steps._common import user_errors
from thesis_mlflow.paths import resolve
from thesis_mlflow.server import process as server


@click.command("serve", help="Start an mlflow tracking server (SQLite store or PostgreSQL, served artifacts, login) under ROOT.")
@click.option("--root", default="mlflow-server", show_default=True,
              help="Folder for mlflow.db, artifacts/, logins and server.log: local disk, yours, writable by nobody else.")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to be reachable from worker nodes (then HTTPS).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=5000, show_default=True, help="0 picks a free port.")
@click.option("--workers", type=click.IntRange(min=1), default=server.DEFAULT_WORKERS, show_default=True,
              help="Server processes; 4 took 36 jobs logging at once without a failure, 1 did not (README).")
@click.option("--allowed-hosts", default=None, help="MLflow 3 Host-header allow-list, e.g. 'login01.nikhef.nl:5000,localhost:5000'.")
@click.option("--backend-store-uri", default=None, envvar="THESIS_MLFLOW_BACKEND_STORE_URI", show_envvar=True,
              help="Override the SQLite store, e.g. postgresql://user@host/mlflow. No password here (`ps` shows a command line to "
                   "every user): keep it in ~/.pgpass, or give the whole URI in the environment variable or a 0600 file.")
@click.option("--backend-store-uri-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file of yours (0600) holding the backend store URI, password included.")
@click.option("--no-auth", is_flag=True, help="No login (a single-user laptop). Default: MLflow basic auth, admin password in ROOT.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="... and this key.")
@click.option("--insecure-http", is_flag=True, help="Beyond loopback, plain HTTP anyway (the login crosses the network in clear text).")
@click.option("--background", is_flag=True, help="Return once the server answers; stop it with --stop.")
@click.option("--stop", "stop_", is_flag=True, help="Stop the server started under ROOT.")
@user_errors
def main(root, host, port, workers, allowed_hosts, backend_store_uri, backend_store_uri_file, no_auth, tls_cert, tls_key, insecure_http,
         background, stop_) -> None:
    from thesis_mlflow.server import logins

    backend_store_uri = _store_uri(backend_store_uri, backend_store_uri_file)
    root = resolve(root)
    existing = server.running(root)
    if stop_:
        if existing is None:
            click.echo(f"no server of yours running under {root} (nothing signalled)")
            return
        existing.stop()
        click.echo(f"stopped mlflow server {existing.uri} (pid {existing.pid})")
        return
    if existing is not None:
        click.echo(f"mlflow server already running: {existing.public_uri} (pid {existing.pid})")
        click.echo(f"export MLFLOW_TRACKING_URI={existing.public_uri}")
        return
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = (Path(tls_cert).resolve(), Path(tls_key).resolve()) if tls_cert else None
    srv = server.start(root, host, port, workers, allowed_hosts, backend_store_uri=backend_store_uri, auth=not no_auth, tls=tls,
                       insecure_http=insecure_http)
    click.echo(f"mlflow server {srv.public_uri} (pid {srv.pid}); store {server.mask(backend_store_uri) or root}")
    if host not in server.LOOPBACK and srv.cafile is None:
        click.echo("warning: plain HTTP beyond loopback (--insecure-http): logins cross the network in clear text")
    if not no_auth:
        path, what = logins.install_client_credentials(root, uri=srv.public_uri, alive=server.answers)
        click.echo(f"login required (MLflow basic auth): user admin, password in {root / logins.CREDENTIALS} (0600)")
        click.echo(f"jobs log in as {logins.JOBS_USER} (EDIT on the study's experiment only), from {path}: {what}")
    click.echo(f"export MLFLOW_TRACKING_URI={srv.public_uri}")
    if srv.cafile is not None:
        pem = logins.install_client_cert(srv.cafile, srv.public_uri)
        click.echo(f"export MLFLOW_TRACKING_SERVER_CERT_PATH={pem}   # the jobs verify the server's certificate")
    if background:
        return
    try:
        while srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


def _store_uri(option: str | None, path: str | None) -> str | None:
    """The backend store URI, refusing a password typed on the command line (it would stay in
    the process table, readable by every user, for as long as serve runs)."""
    ctx = click.get_current_context()
    if option and server.has_password(option) and ctx.get_parameter_source("backend_store_uri") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"--backend-store-uri {server.mask(option)}: a password on the command line is visible to every user "
                               "in `ps`; put it in ~/.pgpass, or pass the URI in THESIS_MLFLOW_BACKEND_STORE_URI or --backend-store-uri-file")
    if path:
        from thesis_mlflow.permissions import check_private

        check_private(Path(path), "backend store URI file")
        if Path(path).stat().st_mode & 0o077:
            raise click.UsageError(f"{path} is readable by others (mode {oct(Path(path).stat().st_mode & 0o777)}); chmod 600 it")
        return Path(path).read_text().strip()
    return option


if __name__ == "__main__":
    main()
