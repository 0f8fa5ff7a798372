"""Getting bytes: scrape each target's /metrics over HTTP into canonical snapshots."""
