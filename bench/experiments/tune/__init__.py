"""``bench tune``: the Optuna learning-rate search, its studies and its outputs."""
