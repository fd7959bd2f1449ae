"""The logins of a tracking server: an admin that stays under the server root, and a jobs
user with the least privilege that lets the study's runs be written.

- ``ROOT/basic_auth.ini`` (0600): MLflow's basic-auth config with the generated admin
  password; ``default_permission = NO_PERMISSIONS``, so a login sees only what it was given.
- ``ROOT/credentials`` (0600): the admin login, for the person (the browser, user management).
- ``ROOT/jobs_credentials`` (0600): the jobs user, created on the server at start with EDIT on
  the study's experiment (it can create and write runs there, and its own experiments; it
  cannot manage users or read experiments it was not given).
- ``~/.mlflow/credentials`` (0600): where MLflow clients (the jobs, on a shared home) find
  their login. It gets the *jobs* login and the URL of the server it is for: the file of
  another server that still answers is never replaced.
"""

from __future__ import annotations

import base64
import configparser
import json
import logging
import secrets
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from thesis_mlflow.errors import UserError
from thesis_mlflow.permissions import write_private

log = logging.getLogger(__name__)

AUTH_INI = "basic_auth.ini"
CREDENTIALS = "credentials"
JOBS_CREDENTIALS = "jobs_credentials"
JOBS_USER = "thesis-jobs"
MARKER = "# written by thesis-mlflow serve"
SERVER_LINE = "# server: "


class OtherServersLogin(UserError):
    """~/.mlflow/credentials holds the login of another server that still answers."""


def ensure_auth_config(root: Path) -> Path:
    """The basic-auth config of this server root, created once with a generated admin password."""
    ini = Path(root) / AUTH_INI
    if not ini.is_file():
        password = secrets.token_urlsafe(24)
        write_private(ini, f"""{MARKER}: the admin password of this server; keep this file 0600
[mlflow]
# a login sees only what it was given (the jobs user: EDIT on the study's experiment)
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{Path(root).resolve() / 'basic_auth.db'}
admin_username = admin
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# one password hash check per client and minute instead of one per request
auth_cache_ttl_seconds = 60
""")
        write_private(Path(root) / CREDENTIALS, credentials_text("admin", password))
    if ini.stat().st_mode & 0o077:
        raise PermissionError(f"{ini} is readable by others (mode {oct(ini.stat().st_mode & 0o777)}); chmod 600 it")
    return ini


def credentials(root: Path) -> tuple[str, str]:
    """The admin login of the server under ``root``."""
    cp = configparser.ConfigParser()
    cp.read(Path(root) / AUTH_INI)
    return cp["mlflow"]["admin_username"], cp["mlflow"]["admin_password"]


def jobs_credentials(root: Path) -> tuple[str, str]:
    """The jobs login of the server under ``root`` (generated the first time)."""
    path = Path(root) / JOBS_CREDENTIALS
    if not path.is_file():
        write_private(path, credentials_text(JOBS_USER, secrets.token_urlsafe(24)))
    cp = configparser.ConfigParser()
    cp.read(path)
    return cp["mlflow"]["mlflow_tracking_username"], cp["mlflow"]["mlflow_tracking_password"]


def credentials_text(user: str, password: str, server: str | None = None) -> str:
    head = MARKER + "\n" + (f"{SERVER_LINE}{server}\n" if server else "")
    return f"{head}[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n"


def _api(uri: str, path: str, login: tuple[str, str], body: dict | None = None, cafile: Path | None = None, method: str = "POST") -> dict:
    req = urllib.request.Request(f"{uri}{path}", data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()})
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
        return json.loads(r.read() or b"{}")


def provision_jobs_user(uri: str, root: Path, experiment: str, cafile: Path | None = None) -> str:
    """Create the jobs user (once) and give it EDIT on ``experiment`` (created by the admin when
    missing); returns the experiment id."""
    admin = credentials(root)
    user, password = jobs_credentials(root)
    try:
        _api(uri, "/api/2.0/mlflow/users/create", admin, {"username": user, "password": password}, cafile)
    except urllib.error.HTTPError as e:
        if b"RESOURCE_ALREADY_EXISTS" not in e.read():  # made at an earlier start
            raise
    try:
        exp = _api(uri, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.request.quote(experiment)}", admin,
                   cafile=cafile, method="GET")["experiment"]
        exp_id = exp["experiment_id"]
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        exp_id = _api(uri, "/api/2.0/mlflow/experiments/create", admin, {"name": experiment}, cafile)["experiment_id"]
    try:
        _api(uri, "/api/3.0/mlflow/users/permissions/grant", admin,
             {"username": user, "resource_type": "experiment", "resource_id": str(exp_id), "permission": "EDIT"}, cafile)
    except urllib.error.HTTPError as e:
        if b"RESOURCE_ALREADY_EXISTS" not in e.read():  # given at an earlier start
            raise
    return exp_id


def client_file(home: Path | None = None) -> Path:
    return Path(home or Path.home()) / ".mlflow" / "credentials"


def server_of(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(SERVER_LINE):
            return line[len(SERVER_LINE):].strip()
    return None


def install_client_credentials(root: Path, home: Path | None = None, uri: str | None = None, alive=None) -> tuple[Path, str]:
    """Put the jobs login of the server under ``root`` where MLflow clients look
    (``~/.mlflow/credentials``, 0600): jobs on a shared home read it there, so no secret travels
    on a command line or in a job's environment. A file this project did not write is left
    alone; one written for another server that still answers (``alive(url)``) is refused."""
    path = client_file(home)
    uri = uri or _url_of(root)
    text = credentials_text(*jobs_credentials(root), server=uri)
    if path.is_file():
        old = path.read_text()
        if old == text:
            return path, "already there"
        if not old.startswith(MARKER):
            return path, "left alone (it holds other credentials): copy " + str(Path(root) / JOBS_CREDENTIALS) + " there yourself"
        other = server_of(old)
        if other and other != uri and alive is not None and alive(other):
            raise OtherServersLogin(
                f"{path} holds the login of another running server ({other}); this one is {uri}. Jobs read one login per home: "
                f"stop that server first (thesis-mlflow serve --root ROOT --stop), or run the jobs of this server with another HOME "
                f"holding {Path(root) / JOBS_CREDENTIALS} as .mlflow/credentials")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, text)
    return path, "written"


def install_client_cert(cert: Path, uri: str, home: Path | None = None) -> Path:
    """The server's certificate beside the client credentials, for ``MLFLOW_TRACKING_SERVER_CERT_PATH``."""
    from urllib.parse import urlsplit

    u = urlsplit(uri)
    dst = client_file(home).parent / f"server-{u.hostname}-{u.port}.pem"
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(cert, dst)
    return dst


def _url_of(root: Path) -> str | None:
    try:
        return (Path(root) / "server.url").read_text().strip()
    except OSError:
        return None
