"""Experiments that combine training, evaluation and reporting (the demo)."""
