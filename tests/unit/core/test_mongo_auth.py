"""MongoDB credentials: which URI every client gets, and where the local password is kept."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from core import mongo_auth
from core.config import load_config
from core.secrets import redact_url


def test_without_auth_clients_get_mongo_uri_as_it_is(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    assert mongo_auth.client_uri(cfg.mongo) == cfg.mongo.uri
    assert not mongo_auth.password_file(cfg.mongo).exists()


def test_the_local_password_is_made_once_and_kept_for_its_owner_only(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}", "mongo.auth=true"])
    uri = mongo_auth.client_uri(cfg.mongo)
    parts = urlsplit(uri)
    assert parts.username == "pipeline" and parts.password and len(parts.password) >= 24
    assert parse_qs(parts.query) == {"authSource": ["admin"], "authMechanism": ["SCRAM-SHA-256"]}
    path = mongo_auth.password_file(cfg.mongo)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == parts.password
    assert mongo_auth.client_uri(cfg.mongo) == uri  # the same on every call
    assert parts.password not in redact_url(uri)


def test_a_given_password_is_used_and_quoted(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}", "mongo.auth=true", "mongo.username=app",
                       "mongo.password='p@ss:w/rd'", "mongo.uri='mongodb://db.example:27017/?replicaSet=rs0'"])
    parts = urlsplit(mongo_auth.client_uri(cfg.mongo))
    assert (parts.username, parts.password, parts.hostname) == ("app", "p%40ss%3Aw%2Frd", "db.example")
    assert parse_qs(parts.query)["replicaSet"] == ["rs0"]
    assert not mongo_auth.password_file(cfg.mongo).exists()


def test_a_uri_with_its_own_user_is_used_as_it_is(tmp_path: Path) -> None:
    uri = "mongodb://me:secret@db.example:27017/?authSource=admin"
    cfg = load_config([f"paths.home={tmp_path}", "mongo.auth=true", f"mongo.uri='{uri}'"])
    assert mongo_auth.client_uri(cfg.mongo) == uri
