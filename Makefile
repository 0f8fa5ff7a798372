.PHONY: demo test lint bench

demo:  ## install, start a simulated fleet, run optimization_cycle, open the Dagster UI
	./scripts/demo.sh

test:  ## install, start PostgreSQL on loopback, lint, run every test
	./scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	./scripts/bench.sh
