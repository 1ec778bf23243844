"""`spectrosynth download`: fetch and check the model for offline use."""

from __future__ import annotations

from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import DEFAULT_MODEL, ModelOpt, QuietOpt, RevisionOpt, friendly_errors, note


@app.command("download")
@friendly_errors
def download_command(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODEL]",
            show_default=False,
            help="base (the published model, the default), small (the authors' small model: their t5x zip, "
            "downloaded and converted once), a hub repo id or a folder; the same as --model.",
        ),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Download again even if the cache has a complete copy.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch the model into the cache now, and check it, for rendering offline later.

    The published model goes to the Hugging Face cache (HF_HOME chooses where it lives); `download small`
    fetches the authors' small model (their t5x zip, SPECTROSYNTH_SMALL_URL to fetch it elsewhere) into
    spectrosynth's cache and converts it there once. Later renders use the cache without the network; set
    HF_HUB_OFFLINE=1 to make sure nothing is fetched from the hub.

    Example: HF_HOME=/data/hf spectrosynth download; spectrosynth download small
    """
    from spectrosynth import weights

    if name is not None and model != DEFAULT_MODEL and name != model:
        raise typer.BadParameter(f"the model is given twice ({name} and --model {model}); give it once")
    chosen = name if name is not None else model
    needs_vocoder = chosen != "small" or _is_folder(chosen)  # the small model may lack one: a note, then
    folder = weights.resolve_model(chosen, revision, progress=not quiet, force=force, vocoder=needs_vocoder)
    has_vocoder = (folder / weights.MELGAN).is_file()
    size = weights.verify_model(folder, vocoder=has_vocoder)
    typer.echo(f"{folder}")
    note(f"{chosen} is complete and checked ({size / 1e9:.2f} GB)", quiet)
    if not has_vocoder:
        from spectrosynth.small_model import no_vocoder_message

        note(no_vocoder_message(), quiet)


def _is_folder(name: str) -> bool:
    from pathlib import Path

    return Path(name).expanduser().exists()
