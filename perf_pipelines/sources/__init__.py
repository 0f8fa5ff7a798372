"""Other places the agent can read engine metrics from than the servers' own `/metrics`.

`prometheus`: an existing Prometheus server (PROMETHEUS_URL) that already scrapes the fleet.
Pure logic (httpx, SQLAlchemy Core): the Dagster asset and the CLI call into it.
"""
