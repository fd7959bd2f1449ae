"""A self-signed certificate for a tracking server reachable beyond loopback.

Basic auth over plain HTTP would send the password across the cluster network in clear text,
so ``serve --host 0.0.0.0`` speaks HTTPS. The certificate is generated once under the server
root (key 0600) for the names the jobs use (this host's name, its fully qualified name,
localhost, 127.0.0.1 and the address served on); clients verify it through MLflow's own
``MLFLOW_TRACKING_SERVER_CERT_PATH``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from thesis_mlflow.permissions import write_private

DAYS = 825  # the longest validity clients accept for a self-signed server certificate


def names(host: str) -> list[str]:
    out = ["localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()]
    if host not in ("0.0.0.0", "::"):
        out.append(host)
    return list(dict.fromkeys(n for n in out if n))


def ensure_cert(root: Path, host: str) -> tuple[Path, Path]:
    """(certificate, key) under ``root/tls``, generated when missing."""
    d = Path(root) / "tls"
    cert, key = d / "server.pem", d / "server.key"
    if cert.is_file() and key.is_file():
        if key.stat().st_mode & 0o077:
            raise PermissionError(f"{key} is readable by others (mode {oct(key.stat().st_mode & 0o777)}); chmod 600 it")
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.getfqdn() or "thesis-mlflow")])
    sans = []
    for n in names(host):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    crt = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(pkey.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
           .not_valid_after(now + datetime.timedelta(days=DAYS))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pkey, hashes.SHA256()))
    write_private(key, pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode())
    tmp = cert.with_name(f".{cert.name}.{os.getpid()}.tmp")
    tmp.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    tmp.replace(cert)
    return cert, key
