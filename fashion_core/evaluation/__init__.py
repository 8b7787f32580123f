"""Evaluation: ``scoring`` (top-k hits), ``metrics`` (per-class tables, intervals), ``stage`` (a stage's data and test split)."""
