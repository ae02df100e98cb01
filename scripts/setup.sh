#!/usr/bin/env bash
# Idempotent set-up of everything this project needs, on a fresh Debian/Ubuntu
# machine or an existing one. Safe to run again: each step checks first, and a
# second run takes a few seconds.
#   - Java 17 + Maven (the local Kafka broker's classpath comes from Maven Central)
#   - uv (pinned) in .cache/tools, then the locked environments:
#       .venv        main: flwr, torch, pyspark, confluent-kafka, pymongo, hydra, fastapi
#       .venv-flink  the Flink job: apache-flink pins clash with flwr/pyspark
#       .venv-superset  Superset 6.1: its pins (SQLAlchemy 1.4, pandas 2.1) clash with the main ones
#   - with --test: Debian's chromium and chromedriver (the browser tests drive them)
#   - with --test or --eval: the eval dependency group (pyod, river) in .venv
#   - the Kafka broker, Flink and Spark Kafka connector jars (resolved once into .cache/jars)
# Nothing here installs into the system Python: every package goes into a virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
UV_VERSION="0.13.8"
TOOLS="$ROOT/.cache/tools"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------
missing=()
# A JDK, not just a JRE: the Flink job has two small Java helpers built with javac.
{ command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1; } || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "${1:-}" = "--test" ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and run again"
  fi
fi

# --- python and uv ---------------------------------------------------------
PY=""
# An existing .venv's own interpreter first: uv recreates the environment when asked for another one
# (a pyenv shim here, /usr/bin/python3.11 there), under whatever is running from it.
existing="$(readlink -f .venv/bin/python 2>/dev/null || true)"
for cand in $existing python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    PY="$(command -v "$cand")"; break
  fi
done
[ -n "$PY" ] || die "Python 3.11 is required (python3.11 on PATH)"

UV="$TOOLS/bin/uv"
if ! { [ -x "$UV" ] && "$UV" --version 2>/dev/null | grep -q " $UV_VERSION"; }; then
  say "installing uv $UV_VERSION into .cache/tools"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never

# The eval group (pyod, river: the peer detectors of `fl-app evaluate`) with --test or --eval, and kept
# once installed: uv sync is exact, so a plain `make run` would otherwise uninstall it.
groups=()
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--eval" ] ||
   { [ -x .venv/bin/python ] && .venv/bin/python -c 'import importlib.util as u, sys
sys.exit(not (u.find_spec("pyod") and u.find_spec("river")))' 2>/dev/null; }; then  # find, not import: 4 s
  groups+=(--group eval)
fi
say "main environment (.venv) from uv.lock${groups:+ (with the eval group)}"
"$UV" sync --frozen --quiet --python "$PY" "${groups[@]}"

say "Flink environment (.venv-flink) from stream/flink/requirements.lock"
[ -x .venv-flink/bin/python ] || "$UV" venv --quiet --python "$PY" .venv-flink
# --python names the target environment explicitly (never the system interpreter).
"$UV" pip sync --quiet --python .venv-flink/bin/python stream/flink/requirements.lock

say "Superset environment (.venv-superset) from analytics/superset/requirements.lock"
[ -x .venv-superset/bin/python ] || "$UV" venv --quiet --python "$PY" .venv-superset
"$UV" pip sync --quiet --python .venv-superset/bin/python analytics/superset/requirements.lock

say "Kafka broker, Flink and Spark Kafka connector jars (.cache/jars)"
.venv/bin/python -c '
from core.config import load_config
from core.services import jars
from stream.flink import launch
cfg = load_config()
jars.resolve("kafka-broker", jars.default_cache_dir())
jars.resolve("spark-kafka", jars.default_cache_dir())
launch.job_jars(cfg)
'

say "ready"
