"""One rich Console for everything the package prints: on a terminal it takes the terminal's
width; into a file or a pipe it does not wrap at 80 columns (tables and the progress line stay
whole in logs)."""
import sys

LOG_WIDTH = 200                          # columns when stdout is not a terminal


def make_console(stderr: bool = False):
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True)
