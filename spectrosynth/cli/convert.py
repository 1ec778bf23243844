"""`spectrosynth convert`: a t5x checkpoint of the authors' code into the published layout."""

from __future__ import annotations

from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import ForceOpt, QuietOpt, friendly_errors, note


@app.command("convert")
@friendly_errors
def convert_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A t5x checkpoint of magenta/music-spectrogram-diffusion: the checkpoint_N folder (with its "
            "`checkpoint` file and one zarr array per parameter), the run's folder, or the zip as published.",
        ),
    ],
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT_DIR", help="The model folder to write, in the published layout.")
    ],
    vocoder: Annotated[
        str | None,
        typer.Option(
            "--vocoder",
            metavar="DIR|FILE.onnx|none",
            show_default=False,
            help="The vocoder to ship with it: a model folder's melgan/model.onnx, an .onnx file, or none. "
            "Default: the published model's, if it is in the Hugging Face cache.",
        ),
    ] = None,
    num_heads: Annotated[
        int | None,
        typer.Option(
            "--num-heads",
            metavar="N",
            min=1,
            show_default=False,
            help="Attention heads, for a checkpoint without its config.gin whose heads are not 64 wide.",
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a t5x checkpoint of the authors' code into a model folder in the published layout.

    The sizes are read from the checkpoint's arrays and checked against its config.gin (beside
    checkpoint_N/). The folder renders with --model OUT_DIR; without a vocoder, with --vocoder griffin-lim.
    Needs msgpack: pip install 'spectrosynth[convert]'.

    Example: spectrosynth convert small_with_context.zip models/small
    """
    from spectrosynth import t5x

    if vocoder is not None and vocoder.strip().lower() == "none":
        source = None
    elif vocoder is not None:
        source = t5x.find_vocoder(vocoder)
    else:
        source = t5x.cached_published_vocoder()
    result = t5x.convert(checkpoint, out_dir, vocoder=source, num_heads=num_heads, force=force,
                         note=lambda message: note(message, quiet))  # fmt: skip
    typer.echo(str(result.folder))
    if result.vocoder is not None:
        with_vocoder = f"with the vocoder of {result.vocoder}"
    else:
        with_vocoder = (
            "without a vocoder (render it with --vocoder griffin-lim, or convert again with --vocoder "
            "DIR|FILE.onnx; `spectrosynth download` puts the published model's in the Hugging Face cache)"
        )
    checked = f", sizes checked against {result.gin}" if result.gin else ", no config.gin found"
    note(f"wrote {result.folder}: {result.parameters / 1e6:.1f} M parameters{checked}, {with_vocoder}", quiet)
