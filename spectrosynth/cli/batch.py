"""`spectrosynth batch`: every MIDI file in a folder tree, resumable, sharded or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import (
    DEFAULT_MODEL,
    DEFAULT_SAMPLER_NAME,
    DEFAULT_VOCODER_NAME,
    BitDepthOpt,
    ChannelsOpt,
    ClipOpt,
    DeviceOpt,
    DtypeOpt,
    DurationOpt,
    GainOpt,
    GuidanceIntervalOpt,
    GuidanceOpt,
    LoudnessOpt,
    ModelLoader,
    ModelOpt,
    MuteOpt,
    NoDrumsOpt,
    NormalizeOpt,
    ProgramOpt,
    QuietOpt,
    RevisionOpt,
    SampleRateOpt,
    SamplerOpt,
    Sampling,
    SeedOpt,
    StartOpt,
    StepsOpt,
    TailOpt,
    TrackOpt,
    TrimOpt,
    VocoderOpt,
    fail,
    friendly_errors,
    output_settings,
    remap_from_options,
)
from spectrosynth.constants import DEFAULT_GUIDANCE


@app.command("batch")
@friendly_errors
def batch_command(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder searched (recursively) for .mid and .midi files.", metavar="IN_DIR")
    ],
    out_dir: Annotated[
        Path,
        typer.Argument(help="Folder for the audio; the input's folder tree is mirrored.", metavar="OUT_DIR"),
    ],
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    sampler: SamplerOpt = DEFAULT_SAMPLER_NAME,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = DEFAULT_GUIDANCE,
    guidance_interval: GuidanceIntervalOpt = "full",
    seed: SeedOpt = 0,
    program: ProgramOpt = None,
    track: TrackOpt = None,
    mute: MuteOpt = None,
    no_drums: NoDrumsOpt = False,
    start: StartOpt = 0.0,
    duration: DurationOpt = None,
    fmt: Annotated[str, typer.Option("--format", metavar="wav|flac", help="Audio format.")] = "wav",
    bit_depth: BitDepthOpt = 16,
    sample_rate: SampleRateOpt = None,
    gain: GainOpt = 0.0,
    normalize: NormalizeOpt = False,
    clip: ClipOpt = "rescale",
    tail: TailOpt = 1.0,
    trim: TrimOpt = True,
    channels: ChannelsOpt = 1,
    loudness: LoudnessOpt = None,
    stems: Annotated[
        bool,
        typer.Option(
            "--stems",
            help="Also write each song's tracks alone into a folder next to its audio (song.wav: "
            "song.stems/03-strings-violin.wav, ...), at the mix's level.",
        ),
    ] = False,
    save_mel: Annotated[
        bool, typer.Option("--save-mel", help="Also save each log-mel spectrogram next to its audio (.npy).")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            metavar="N",
            min=1,
            max=256,
            help="Songs sharing each pass through the model; a finished song's place goes at once to the "
            "next. Default: 1 on a CPU, 8 on a GPU.",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Render only shard I of N (1-based), a stable split by file path: N processes (a Slurm "
            "array: --shard $SLURM_ARRAY_TASK_ID/N) together render every file once.",
        ),
    ] = None,
    files_from: Annotated[
        str | None,
        typer.Option(
            "--files-from",
            metavar="LIST",
            help="Render the files listed in LIST (one path per line, relative to IN_DIR; '-' reads standard "
            "input) instead of searching IN_DIR.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Render on a Ray cluster: 'local' starts one on this machine, 'auto' or HOST:PORT joins "
            "one. Needs pip install 'spectrosynth[ray]'.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            help="With --ray: model-holding workers. Default: one per GPU, else one per 2 CPUs.",
        ),
    ] = None,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            metavar="K",
            min=1,
            max=100,
            help="With --ray: attempts per file when its worker dies, before it is recorded as failed.",
        ),
    ] = 2,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Render again files whose last attempt failed.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Render again files whose output exists, even with changed settings."
        ),
    ] = False,
    vocoder: VocoderOpt = DEFAULT_VOCODER_NAME,
    quiet: QuietOpt = False,
) -> None:
    """Render every MIDI file in a folder tree, loading the model once.

    The run can be stopped at any time (even killed) and resumed by running the same command: outputs
    that exist are skipped, as are files that failed before (--retry-failed tries them again). Every
    attempt is recorded in OUT_DIR/.spectrosynth/manifest; `spectrosynth status OUT_DIR` sums it up. A file
    that cannot be rendered is reported and the batch goes on; the exit code is 1 if any file failed.

    Examples:

      spectrosynth batch midi/ audio/ --format flac

      spectrosynth batch lakh/ audio/ --shard $SLURM_ARRAY_TASK_ID/64 --device cuda

      spectrosynth batch lakh/ audio/ --ray auto --files-from todo.txt
    """
    from spectrosynth.batch import BatchOptions, RenderSettings, parse_shard, run_batch
    from spectrosynth.progress import BatchProgressDisplay

    settings = output_settings(fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim, channels,
                               loudness)  # fmt: skip
    if save_mel and channels == 2:
        raise typer.BadParameter("a stereo mix of tracks has no single spectrogram; use --channels 1",
                                 param_hint="'--save-mel'")  # fmt: skip
    sampling = Sampling.from_options(sampler, steps, guidance, guidance_interval)
    remap_from_options(program, track, mute, no_drums)  # a bad option fails now
    render = RenderSettings(
        model, revision, dtype, sampling.sampler, sampling.steps, sampling.guidance, seed,
        tuple(program or ()), tuple(track or ()), tuple(mute or ()), no_drums, start, duration, settings,
        save_mel, vocoder=vocoder.value, guidance_interval=sampling.interval, stems=stems,
    )  # fmt: skip
    options = BatchOptions(
        in_dir, out_dir, render, device, batch_size, force, retry_failed,
        parse_shard(shard) if shard is not None else None, files_from, ray, workers, max_attempts,
    )  # fmt: skip
    loader = ModelLoader(model, revision, device, dtype, quiet, vocoder=vocoder.value)
    with BatchProgressDisplay(quiet) as progress:
        from spectrosynth.batch import BatchReport

        report = BatchReport()
        try:
            run_batch(options, loader.get, progress, report)
        except KeyboardInterrupt:
            _batch_summary(report, interrupted=True)
            raise fail(
                "interrupted; finished files are kept, run the same command again to resume", 130
            ) from None
    _batch_summary(report, quiet=quiet)
    if report.failed:
        raise typer.Exit(1)


def _batch_summary(report, interrupted: bool = False, quiet: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    if quiet and not report.failed:
        return
    console = Console(stderr=True, highlight=False)
    table = Table(title="batch interrupted" if interrupted else "batch finished", title_justify="left")
    columns = ["rendered", "skipped", "failed", "audio", "wall time", "x real time"]
    wall = report.wall_seconds
    speed = report.audio_seconds / wall if wall > 0 else 0.0
    row = [str(report.rendered), str(report.skipped), str(len(report.failed)),
           f"{report.audio_seconds:.1f} s", f"{wall:.1f} s", f"{speed:.2f}"]  # fmt: skip
    if report.loudness:  # --loudness: what the files measure, lowest to highest
        low, high = min(report.loudness), max(report.loudness)
        columns.append("loudness")
        row.append(f"{low:.1f} LUFS" if high - low < 0.05 else f"{low:.1f} to {high:.1f} LUFS")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*row)
    console.print(table)
    for rel, message in report.failed:
        console.print(f"failed: {message}" if rel in message else f"failed: {rel}: {message}", soft_wrap=True)
    errors = report.top_errors()
    if len(report.failed) > 1 and errors:
        console.print("most frequent errors:")
        for message, count in errors:
            console.print(f"  {count:6d}  {message}", soft_wrap=True)
