"""A fleet of simulated vLLM, SGLang, TGI and llama.cpp servers that respond to settings and load.

Plain Python (numpy), no Dagster: `Fleet` holds the servers and a clock (real or virtual),
`fleet.http` serves their `/metrics` and a control API on loopback.
"""
