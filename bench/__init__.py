"""segbench: one engine that trains and evaluates every model under the same protocol."""
