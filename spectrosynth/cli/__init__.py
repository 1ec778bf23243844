"""The `spectrosynth` command line. Thin by design: the work happens in the library modules.

Each command lives in its own module (inspect.py, render.py, play.py, batch.py, status.py, download.py,
convert.py, dataset.py, train.py, evaluate.py), which registers it on `app` when imported; the imports below
keep the order in which `spectrosynth --help` lists them. app.py holds the Typer app, its one-line usage
errors and `--version`; common.py what several commands share: error handling (`friendly_errors`, `fail`,
`note`), the shared options, reading a score and the instrument options, the output settings, the lazy model
loader and the sampling options.

Heavy modules (torch, numpy, pretty_midi) are imported inside the commands so that `--help` is instant.
Every failure a user can cause is one line on stderr: exit code 1, or 2 for a wrong command line.
"""

from spectrosynth.cli.app import app, main

# The commands, one module each: importing one registers its command on `app`, and `spectrosynth --help`
# lists them in this order. A new command is one more line here.
# isort: off
from spectrosynth.cli import inspect  # noqa: F401
from spectrosynth.cli import render  # noqa: F401
from spectrosynth.cli import play  # noqa: F401
from spectrosynth.cli import batch  # noqa: F401
from spectrosynth.cli import status  # noqa: F401
from spectrosynth.cli import download  # noqa: F401
from spectrosynth.cli import convert  # noqa: F401
from spectrosynth.cli import doctor  # noqa: F401
from spectrosynth.cli import dataset  # noqa: F401
from spectrosynth.cli import train  # noqa: F401
from spectrosynth.cli import evaluate  # noqa: F401
# isort: on

__all__ = ["app", "main"]
