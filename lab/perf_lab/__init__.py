"""perf_pipelines' lab: what measures the product, kept out of the product's install."""
