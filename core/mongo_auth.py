"""MongoDB credentials: the one place that gives a client the URI to connect with.

With ``mongo.auth`` every client logs in with SCRAM-SHA-256 as ``mongo.username``
(authSource ``admin``). A URI that already names a user is used as it is (a remote
MongoDB whose credentials the user gives). For the local server an empty
``mongo.password`` is generated once and kept in a 0600 file under
``paths.data_dir``, like the SuperNode keys. The password travels inside the URI,
which core/secrets.py redacts in logs; files that hold the URI must be 0600.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

MECHANISM = "SCRAM-SHA-256"
AUTH_SOURCE = "admin"


def password_file(cfg: Any) -> Path:
    return Path(cfg.paths.data_dir) / "mongo-auth" / "password"


def has_user(uri: str) -> bool:
    return "@" in urlsplit(uri).netloc


def password(cfg: Any) -> str:
    """The configured password, or the local one (generated and kept 0600 on first use)."""
    if cfg.mongo.password:
        return str(cfg.mongo.password)
    path = password_file(cfg)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    os.replace(tmp, path)
    return value


def with_credentials(uri: str, username: str, secret: str) -> str:
    """``uri`` with ``username:secret@`` and the SCRAM-SHA-256 / admin options added."""
    parts = urlsplit(uri)
    netloc = f"{quote(username, safe='')}:{quote(secret, safe='')}@{parts.netloc}"
    options = [o for o in parts.query.split("&") if o]
    keys = {o.split("=", 1)[0].lower() for o in options}
    if "authsource" not in keys:
        options.append(f"authSource={AUTH_SOURCE}")
    if "authmechanism" not in keys:
        options.append(f"authMechanism={MECHANISM}")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "&".join(options), parts.fragment))


def client_uri(cfg: Any) -> str:
    """The URI every component connects with (``cfg``: the AppConfig)."""
    uri = str(cfg.mongo.uri)
    if not cfg.mongo.auth or has_user(uri):
        return uri
    return with_credentials(uri, str(cfg.mongo.username), password(cfg))
