"""Evaluation: real sample data, the case-folder contract, reference centerlines (skeleton), the
noise model, metrics, the harness that runs every method, the report and its figures."""
