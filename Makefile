# The two commands of the README.
.PHONY: demo test setup lint bench

setup:
	@bash scripts/setup.sh

## Set everything up, start a real server, run a sandboxed code job and a local text job.
demo: setup
	@.venv/bin/python scripts/demo.py

## Lint, type-check and run the whole test suite.
test: setup lint
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests scripts bench
	.venv/bin/ruff format --check src tests scripts bench
	.venv/bin/mypy
