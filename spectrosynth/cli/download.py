"""`spectrosynth download`: fetch and check the model for offline use."""

from __future__ import annotations

from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import DEFAULT_MODEL, ModelOpt, QuietOpt, RevisionOpt, friendly_errors, note


@app.command("download")
@friendly_errors
def download_command(
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Download again even if the cache has a complete copy.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch the model into the Hugging Face cache now, and check it, for rendering offline later.

    Later renders use the cache without the network; set HF_HUB_OFFLINE=1 to make sure nothing is fetched.
    HF_HOME chooses where the cache lives.

    Example: HF_HOME=/data/hf spectrosynth download
    """
    from spectrosynth import weights

    folder = weights.resolve_model(model, revision=revision, progress=not quiet, force=force)
    size = weights.verify_model(folder)
    typer.echo(f"{folder}")
    note(f"{model} is complete and checked ({size / 1e9:.2f} GB)", quiet)
