"""What every command module shares: the error boundary and stderr messages."""
import functools

import typer

from ..errors import AvqaError


def clean_errors(fn):
    """AvqaError (and a missing optional extra) becomes a one-line message and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvqaError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1)
        except ImportError as e:
            typer.secho(f"error: {e}. Install the matching extra, e.g. pip install 'avqa-edge[train]'.", fg="red", err=True)
            raise typer.Exit(1)
    return wrapper


def err(msg: str) -> None:
    typer.echo(msg, err=True)
