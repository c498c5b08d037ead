"""Prefect flows and deployments around the codec (the only package that imports Prefect)."""
