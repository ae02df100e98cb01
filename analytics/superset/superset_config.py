"""Superset's configuration, read by Superset itself (``SUPERSET_CONFIG_PATH``) in its own virtualenv.

Everything comes from the environment that :mod:`analytics.superset.server` sets:
``FL_SUPERSET_HOME`` holds the metadata database and the secret key.
"""

import os
from pathlib import Path

_home = Path(os.environ["FL_SUPERSET_HOME"])

SECRET_KEY = (_home / "secret_key").read_text().strip()  # made on first set-up, 0600, never in the repo
SQLALCHEMY_DATABASE_URI = f"sqlite:///{_home / 'superset.db'}"
# The serving store is an SQLite file by default; Superset refuses SQLite data sources unless told.
PREVENT_UNSAFE_DB_CONNECTIONS = False
# Ours is a local, single-worker server: no Redis, metadata cached in memory for a minute. Chart data
# for 10 s only: the batch analytics renew the tables every 20 s and the dashboards refresh every 20 s,
# so a number on a dashboard is at most ~55 s behind MongoDB (issue 22).
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 60}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 10}
RATELIMIT_STORAGE_URI = "memory://"
SUPERSET_WEBSERVER_TIMEOUT = 120
