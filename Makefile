.PHONY: demo test test-real lint bench screenshots soak

demo:  ## install, start a simulated fleet, run optimization_cycle, open the Dagster UI
	./scripts/demo.sh

test:  ## install, start PostgreSQL on loopback, lint, run every test
	./scripts/test.sh

test-real:  ## build a real llama-server once (cache outside the checkout), run the real_engine tests
	./scripts/bootstrap.sh dev
	PATH="$$HOME/.local/bin:$$PATH" uv sync --locked --quiet --group dev --group real-engine --inexact
	.venv/bin/perf-pipelines llama-server build
	PERF_REQUIRE_REAL_ENGINE=1 .venv/bin/pytest -p no:cacheprovider -m real_engine tests/lab/real_engine

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	./scripts/bench.sh

screenshots:  ## refresh docs/screenshots from the browser test (tests never write there)
	PERF_SCREENSHOTS_DIR=docs/screenshots ./scripts/test.sh tests/deploy/test_ui_browser.py

soak:  ## an hour of the agent (daemon, sidecar, 1,000 simulated servers) with random faults; docs/reliability.md#soak
	./scripts/install_debian_packages.sh && ./scripts/bootstrap.sh dev && .venv/bin/python bench/soak.py $(SOAK_ARGS)
