"""Stages: plain functions and classes over a batch; only the runner touches stream commands."""
