"""What counts as a secret, decided once: in a URI (``carries_secret``, ``mask``) and in the
name of an environment variable (``looks_secret``).

Every place that writes a job file, a dry-run printout, a log line, a message or a param asks
here, so a URI the server's own checks call secret is never written into a batch job (a SLURM
script, a Condor submit file) and is never printed unmasked.

A URI carries a secret when it has a password in its user-info (``user:PW@host``), or a query
parameter or libpq keyword that holds one (``?password=PW``, ``password=PW``, ``?token=...``).
A user name alone is no secret, but a batch job must not carry it either (``has_login``): the
login belongs in ``~/.mlflow/credentials``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# Query parameters and libpq keywords whose value is a secret. (Matched as whole keys:
# ``sslkey=/path`` is a path, not ``key``.)
SECRET_PARAMS = ("password", "passwd", "pwd", "pass", "sslpassword", "token", "access_token", "auth_token", "id_token", "api_key",
                 "apikey", "key", "secret", "client_secret", "sig", "signature", "x-amz-signature", "x-amz-security-token", "sas")
_PARAM = re.compile(rf"(?i)(?<![A-Za-z0-9_-])({'|'.join(re.escape(k) for k in SECRET_PARAMS)})=([^&;\s]*)")

# Words that make a variable's name a secret's name, and names that hold secrets without saying
# so in every part (a wildcard could match them at submit time even when they are not set now).
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "USERNAME", "KEY", "AUTH", "PASSWD", "CONNECTION_STRING")
KNOWN_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "DATABRICKS_TOKEN",
                 "PGPASSWORD", "PGPASSFILE", "HF_TOKEN", "GITHUB_TOKEN", "X509_USER_PROXY", "KRB5CCNAME")


def mask(uri: str | None) -> str | None:
    """``uri`` with every secret replaced by ``***`` (for anything printed, logged or written):
    ``user:PW@host``, secret query parameters and libpq keywords (``SECRET_PARAMS``)."""
    if not uri:
        return uri
    out = _PARAM.sub(r"\1=***", uri)
    try:
        u = urlsplit(out)
        password = u.password
    except ValueError:  # not a URL at all (a libpq keyword string): the keywords above were its secrets
        return out
    if "://" not in out or password is None:
        return out
    host = u.netloc.rsplit("@", 1)[1]
    return urlunsplit((u.scheme, f"{u.username}:***@{host}", u.path, u.query, u.fragment))


def carries_secret(value: str | None) -> bool:
    """Whether ``value`` (a URI, a libpq string, an option) holds a secret in any form ``mask`` hides."""
    return bool(value) and mask(value) != value


def has_login(uri: str) -> bool:
    """A secret, or a user name in the URI's user-info (``user@host``): a batch job carries neither."""
    if carries_secret(uri):
        return True
    try:
        return bool(urlsplit(uri).username)
    except ValueError:
        return False


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (or is a known one)."""
    return name in KNOWN_SECRETS or any(w in name.upper() for w in SECRET_WORDS)
