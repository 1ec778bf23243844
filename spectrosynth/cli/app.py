"""The `spectrosynth` Typer app: usage errors as one line, and `--version`. Commands register on `app`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from spectrosynth.cli.common import PROG, ClickException, UsageError


class _OneLineErrors(TyperGroup):
    """Usage errors as one line ("spectrosynth: error: ..."), exit code 2, instead of a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as e:
            if not standalone_mode:
                raise
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # plain `spectrosynth`
                typer.echo(e.ctx.get_help())
                sys.exit(0)
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            typer.echo(f"{PROG}: error: {e.format_message()}{where}", err=True)
            sys.exit(2)
        except ClickException as e:
            if not standalone_mode:
                raise
            typer.echo(f"{PROG}: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo(f"{PROG}: interrupted", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


app = typer.Typer(
    name=PROG,
    cls=_OneLineErrors,
    help="Render MIDI files to audio with the Spectrogram Diffusion model (Hawthorne et al., ISMIR 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"{PROG} {version('spectrosynth')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Render MIDI files to audio with the Spectrogram Diffusion model (Hawthorne et al., ISMIR 2022).

    Run `spectrosynth COMMAND --help` for a command's options. Set SPECTROSYNTH_DEBUG=1 to see tracebacks.
    """


def main() -> None:
    """Console-script entry point."""
    app()
