"""The one package exception: library code raises it, the CLI prints it and exits 1."""


class AvqaError(Exception):
    """A user-facing error: bad input, missing file, impossible option combination."""
