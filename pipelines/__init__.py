"""Thin runnable drivers: `python -m pipelines.<name> --help`."""
