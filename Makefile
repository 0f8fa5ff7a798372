.PHONY: demo test lint bench screenshots

demo:  ## install, start a simulated fleet, run optimization_cycle, open the Dagster UI
	./scripts/demo.sh

test:  ## install, start PostgreSQL on loopback, lint, run every test
	./scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	./scripts/bench.sh

screenshots:  ## refresh docs/screenshots from the browser test (tests never write there)
	PERF_SCREENSHOTS_DIR=docs/screenshots ./scripts/test.sh tests/deploy/test_ui_browser.py
