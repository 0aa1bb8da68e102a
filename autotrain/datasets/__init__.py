"""Datasets: discovery, image checks, validation, staging, disk space and the checks before queueing."""
