"""Experiments: sweeps, ablations, paper tables and LR searches, each a list of runs for the engine."""
