"""The one exception type the CLI turns into a single clear line and exit status 2."""


class BenchError(Exception):
    """A user-facing error: bad input, bad option, missing file. Message is one line."""
