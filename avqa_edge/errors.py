"""The package's exceptions. Library code raises an AvqaError subclass; the CLI prints its
message on one line and exits 1, and the HTTP server answers with its `http_status`."""


class AvqaError(Exception):
    """A user-facing error: bad input, missing file, impossible option combination."""

    http_status = 400


class ConfigError(AvqaError):
    """Options or a config file that cannot work together."""


class DataError(AvqaError):
    """Training or evaluation data that is missing or malformed."""


class RunError(AvqaError):
    """A run directory that is missing, foreign, unfinished or damaged."""


class BundleError(AvqaError):
    """An exported bundle that is missing, damaged, tampered with or does not match."""

    http_status = 500


class ParityError(AvqaError):
    """A backend whose outputs disagree with the PyTorch reference beyond the thresholds."""

    http_status = 500


class SensorError(AvqaError):
    """A camera or microphone that cannot be opened or read."""

    http_status = 503


class QuestionError(AvqaError):
    """A question the model cannot answer as asked (empty, too long, mostly unknown words)."""

    http_status = 422
