"""Hypothesis strategies that produce the reference's objects and checkpoint files."""
