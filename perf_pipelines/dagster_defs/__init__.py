"""Dagster wiring: thin assets, checks, jobs, schedules and sensors over the plain-Python logic."""
