"""MongoDB credentials: the one place that gives a client the URI to connect with.

With ``mongo.auth`` every client logs in with SCRAM-SHA-256 as ``mongo.username``
(authSource ``admin``). A URI that already names a user is used as it is (a remote
MongoDB whose credentials the user gives). For the local server an empty
``mongo.password`` is generated once and kept in a 0600 file under
``mongo.login_dir``, like the SuperNode keys. The password travels inside the URI,
which core/secrets.py redacts in logs; files that hold the URI must be 0600.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from core.atomic import write_text

if TYPE_CHECKING:  # the Flink job's environment imports this module too, without Hydra
    from core.config import MongoConfig

MECHANISM = "SCRAM-SHA-256"
AUTH_SOURCE = "admin"


def password_file(mongo: MongoConfig) -> Path:
    return Path(mongo.login_dir) / "password"


def has_user(uri: str) -> bool:
    return "@" in urlsplit(uri).netloc


def password(mongo: MongoConfig) -> str:
    """The configured password, or the local one (generated and kept 0600 on first use)."""
    if mongo.password:
        return str(mongo.password)
    if not mongo.local_server.enabled:  # a server of the user's: its password is theirs to give
        raise ValueError("mongo.password: required with mongo.auth=true and a MongoDB of your own "
                         "(set $MONGO_PASSWORD, or give user:password in mongo.uri)")
    path = password_file(mongo)
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    write_text(path, value + "\n", mode=0o600)
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


def client_uri(mongo: MongoConfig) -> str:
    """The URI every component connects with."""
    uri = str(mongo.uri)
    if not mongo.auth or has_user(uri):
        return uri
    return with_credentials(uri, str(mongo.username), password(mongo))
