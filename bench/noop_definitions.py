"""The peer of bench/bench_dagster.py: a code location whose one job does nothing.

One asset with an empty body, run with the same executor as `optimization_cycle`, so what a run
of it costs is Dagster's own share: the run worker's start-up, the code location load, the
event and run storage writes. Served by `dagster api grpc -m bench.noop_definitions`.
"""

from dagster import Definitions, asset, define_asset_job, in_process_executor


@asset
def noop() -> None:
    """Does nothing: the measurement is everything around it."""


noop_job = define_asset_job("noop_job", selection=[noop], executor_def=in_process_executor)

defs = Definitions(assets=[noop], jobs=[noop_job])
