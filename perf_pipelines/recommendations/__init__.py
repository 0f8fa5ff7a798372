"""Tuning recommendations in engine-native flags (pure Python)."""
