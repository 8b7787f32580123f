"""Helpers the test modules share (generated data, MLflow stores, stand-ins), imported as ``tests.helpers.<module>``.

Fixtures live in ``tests/conftest.py``; a test module imports helpers from here, never from another test module.
"""
