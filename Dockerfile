# One image for every app service of docker-compose.yml (profile "app").
# Not built in CI (no Docker engine there); mirrors what scripts/setup.sh does.
# Built as root, run as `app` (uid 10001): the code and environments are root's and read-only
# to it; it writes only /app/.data (the compose volume), /app/.run and /app/logs.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven make \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
ENV UV_PYTHON_DOWNLOADS=never FL_APP_HOME=/app PATH=/app/.venv/bin:$PATH
COPY pyproject.toml uv.lock README.md ./
COPY stream/flink/requirements.lock stream/flink/requirements.lock
COPY analytics/superset/requirements.lock analytics/superset/requirements.lock
RUN uv sync --frozen --no-dev --no-install-project \
 && uv venv .venv-flink \
 && uv pip sync --python .venv-flink/bin/python stream/flink/requirements.lock \
 && uv venv .venv-superset \
 && uv pip sync --python .venv-superset/bin/python analytics/superset/requirements.lock
COPY . .
RUN uv sync --frozen --no-dev \
 && .venv/bin/python -c 'from core.config import load_config; from stream.flink import launch; from core.services import jars; cfg = load_config(); jars.resolve("kafka-broker", jars.default_cache_dir()); jars.resolve("spark-kafka", jars.default_cache_dir()); launch.job_jars(cfg)'
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin app \
 && mkdir -p /app/.data /app/.run /app/logs /app/.cache \
 && chown app:app /app/.data /app/.run /app/logs \
 && chown -R app:app /app/.cache \
 && chmod 0700 /app/.data /app/.run /app/logs
USER 10001:10001
