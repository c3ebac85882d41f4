"""Workflows that join `envs` and `policies`: training, evaluation, benchmarks and the CLI."""
