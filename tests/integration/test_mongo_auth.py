"""MongoDB with a login (mongo.auth): the real local server, started as `fl-app services up` starts it."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from core import mongo_auth, storage
from core.config import load_config
from core.services import mongo

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_the_pipelines_login_reads_and_writes(tmp_path: Path) -> None:
    port = free_port()
    cfg = load_config([f"paths.home={tmp_path}", "mongo.auth=true", f"mongo.uri='mongodb://127.0.0.1:{port}'"])
    server = mongo.server_process(cfg)
    server.start()
    try:
        secret = mongo_auth.password_file(cfg.mongo).read_text().strip()
        assert stat.S_IMODE(mongo_auth.password_file(cfg.mongo).stat().st_mode) == 0o600

        with storage.Storage.from_config(cfg.mongo) as store:
            store.ensure_schema()
            store.db.probe.insert_one({"n": 1})
            assert store.db.probe.find_one({"n": 1}) is not None

        anonymous = f"mongodb://127.0.0.1:{port}/"
        wrong = mongo_auth.with_credentials(anonymous, cfg.mongo.username, "not-" + secret)
        for uri in (anonymous, wrong):
            client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=2000)
            db = client[cfg.mongo.database]
            with pytest.raises((OperationFailure, PyMongoError)):
                db.probe.find_one()
            with pytest.raises((OperationFailure, PyMongoError)):
                db.probe.insert_one({"n": 2})
            client.close()

        pid = server.pid()
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "--auth" in argv and secret not in argv
        for log in Path(cfg.paths.logs_dir).rglob("*"):
            if log.is_file():
                assert secret not in log.read_text(errors="replace"), log
    finally:
        server.stop()

    # A restart keeps the user (created once) and the password.
    server.start()
    try:
        assert mongo_auth.password_file(cfg.mongo).read_text().strip() == secret
        with storage.Storage.from_config(cfg.mongo) as store:
            assert store.db.probe.find_one({"n": 1}) is not None
    finally:
        server.stop()
