"""TLS and SuperNode authentication for a deployed federation: the flags of each Flower process
and the certificates and keys they read (``fl.security``; made by :mod:`core.certs`)."""

from __future__ import annotations

from pathlib import Path

from core import certs
from core.certs import CertPaths
from core.config import AppConfig
from fl_app.federation.settings import every_device


def superlink_flags(cfg: AppConfig) -> list[str]:
    security = cfg.fl.security
    if not security.tls:
        return ["--insecure"]
    paths = CertPaths(Path(security.certs_dir))
    flags = ["--ssl-ca-certfile", str(paths.ca_cert), "--ssl-certfile", str(paths.superlink_cert),
             "--ssl-keyfile", str(paths.superlink_key)]
    return [*flags, "--enable-supernode-auth"] if security.supernode_auth else flags


def supernode_flags(cfg: AppConfig, device: int) -> list[str]:
    # The SuperNode's own runtime API (its ClientApps) stays plain HTTP on 127.0.0.1.
    security = cfg.fl.security
    if not security.tls:
        return ["--insecure"]
    paths = CertPaths(Path(security.certs_dir))
    flags = ["--root-certificates", str(paths.ca_cert)]
    return [*flags, "--auth-supernode-private-key", str(paths.supernode_key(device))] if security.supernode_auth \
        else flags


def ensure_certificates(cfg: AppConfig, force: bool = False) -> list[Path]:
    """Make the CA, the SuperLink certificate and the devices' key pairs that are missing: a key pair for
    every device of the data set, those left to other machines (``fl.devices``) too."""
    security = cfg.fl.security
    keyed = every_device(cfg) if security.supernode_auth else []
    return certs.make(Path(security.certs_dir), security.hostnames, keyed,
                      days=security.certificate_days, force=force)

