"""The engine: one run trained, evaluated, scored and stored (train, inference, metrics, results, runner)."""
