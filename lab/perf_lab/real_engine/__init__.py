"""Real engines in the loop: llama.cpp's llama-server, built from its source on PyPI and run on
CPU with a small real model (see `llamacpp`, `server` and `perf-pipelines llama-server`)."""
