# The two commands:  `make run`  (whole pipeline on local defaults)
#                    `make test` (the test suite; .ci/run calls exactly this)
# Both install what is missing first (scripts/setup.sh, idempotent).
# Pass Hydra overrides to run with ARGS, e.g. make run ARGS="profile=production".

.PHONY: setup setup-test setup-eval run stop reset status lint test test-fast bench

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/fl-app run $(ARGS)

stop:
	.venv/bin/fl-app stop $(ARGS)

# Stop, then delete what flowed (topics, collections, checkpoints, producer position); asks first.
reset:
	.venv/bin/fl-app reset $(ARGS)

status:
	.venv/bin/fl-app status $(ARGS)

# The tests also need a browser (Debian's chromium) for the Superset and live-page tests.
setup-test:
	@scripts/setup.sh --test

# The peer detectors `fl-app evaluate` compares with (pyod, river): uv sync --group dev --group eval.
setup-eval:
	@scripts/setup.sh --eval

lint: setup-test
	.venv/bin/ruff check .
	.venv/bin/mypy

# Lint and types first (seconds), then every test, integration ones included.
test: lint
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: lint
	.venv/bin/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

bench: setup
	.venv/bin/python -m benchmarks $(ARGS)
