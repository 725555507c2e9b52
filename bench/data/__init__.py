"""Data: resolving ``--dataset``, reading and writing the Synapse layout, sampling, splits, imports."""
