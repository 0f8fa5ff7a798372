"""Deployment tests: docker-compose files, and the same topology run natively."""
