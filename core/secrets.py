"""Which configuration values are secrets, and how they are kept out of logs, output and command lines.

A key is secret by its name (:data:`SECRET_WORDS`: ``api.api_key``,
``superset.admin_password``, and any later ``...password`` / ``...secret`` /
``...token`` key without a change here); a URL-valued key (``mongo.uri``,
``spark.batch.store_url``) is secret only in its password
(``mongodb://user:PASSWORD@host``).

Process arguments are world-readable (``/proc/<pid>/cmdline``, ``ps``), a
process's environment is not (``/proc/<pid>/environ`` is mode 0400, its
owner's). So the service runner moves secret overrides out of a child's
command line into :data:`ENV` (:func:`split_overrides`), and every ``fl-app``
command reads them back from there (:func:`take_env_overrides`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

ENV = "FL_APP_SECRET_OVERRIDES"  # a JSON list of Hydra overrides, given in the environment, not on argv
MASK = "***"
MIN_MASKED = 4  # shorter "secrets" (a test's "x") are not masked in free text: it would shred every line
SECRET_WORDS = ("password", "secret", "api_key", "token", "credential")
# scheme://user:password@host: the password is group 2.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.\-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)
_OVERRIDE = re.compile(r"^[+~]{0,2}([A-Za-z_][\w.]*)=(.*)$", re.DOTALL)


def is_secret_key(key: str) -> bool:
    """``api.api_key``, ``superset.admin_password``, ``kafka.sasl.password``, ...: by the key's last part."""
    last = key.rsplit(".", 1)[-1].lower()
    return any(word in last for word in SECRET_WORDS)


def redact_url(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password masked."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def url_passwords(text: str) -> list[str]:
    return [m.group(2) for m in _URL_PASSWORD.finditer(text)]


def is_secret_override(word: str) -> bool:
    """A Hydra override (``key=value``) whose value is secret: a secret key, or a URL with a password."""
    match = _OVERRIDE.match(word)
    if match is None:
        return False
    key, value = match.groups()
    return (is_secret_key(key) and value != "") or bool(url_passwords(value))


def redact_override(word: str) -> str:
    match = _OVERRIDE.match(word)
    if match is None:
        return redact_url(word)
    if is_secret_key(match.group(1)) and match.group(2):
        return word[: match.start(2)] + MASK
    return redact_url(word)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(argv without secret overrides, the secret overrides)``; the runner passes the second in :data:`ENV`."""
    kept = [w for w in argv if not is_secret_override(w)]
    return kept, [w for w in argv if is_secret_override(w)]


def take_env_overrides() -> list[str]:
    """The secret overrides the runner passed in :data:`ENV`, removed from this process's environment so
    that programs it starts otherwise (``flwr``, Superset) do not inherit them."""
    raw = os.environ.pop(ENV, "")
    try:
        words = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [w for w in words if isinstance(w, str)]


def values(app: Any) -> list[str]:
    """Every secret value in a configuration (dataclass tree): secret keys' values and URL passwords."""
    found: list[str] = []
    for key, value in _walk(app):
        if isinstance(value, str):
            if is_secret_key(key) and value:
                found.append(value)
            found += url_passwords(value)
    return sorted(set(found), key=len, reverse=True)  # longest first: one secret inside another is masked whole


def redacted(app: Any) -> Any:
    """A copy of the configuration with every secret masked (for ``--cfg``, ``fl-app config`` and logs)."""
    changes: dict[str, Any] = {}
    for f in fields(app):
        value = getattr(app, f.name)
        if is_dataclass(value):
            changes[f.name] = redacted(value)
        elif isinstance(value, str):
            changes[f.name] = MASK if is_secret_key(f.name) and value else redact_url(value)
    return replace(app, **changes)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= MIN_MASKED:
            text = text.replace(secret, MASK)
    return redact_url(text)


class RedactingFilter(logging.Filter):
    """Masks the given secrets (and any URL password) in every record a handler writes."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= MIN_MASKED]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        return True


def install_log_filter(secrets: Iterable[str]) -> None:
    """Add a :class:`RedactingFilter` to every handler of the root logger."""
    log_filter = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)


def _walk(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value
