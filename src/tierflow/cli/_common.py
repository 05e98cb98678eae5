"""What every command shares: the consoles, one-line errors, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tierflow.errors import RecoverableError, TierflowError, UserError

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def run_cli(app: typer.Typer) -> None:
    """Run ``app``; a tierflow error becomes ``error: <message>`` on stderr and a non-zero exit."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except (RecoverableError, TierflowError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A transient progress line for steps that take more than a second (terminals only)."""
    if not err_console.is_terminal:
        yield
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        progress.add_task(description, total=None)
        yield
