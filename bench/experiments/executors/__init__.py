"""Executors: where the runs of a command execute (this process, a Slurm array, Ray tasks).

Every executor hands each run to the same engine function, ``bench.engine.runner.execute``,
with the same ``RunSpec``; the run folder and its numbers do not depend on the executor.
"""
