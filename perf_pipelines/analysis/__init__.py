"""Windows of metric snapshots turned into statistics and bottleneck reports (pure Python)."""
