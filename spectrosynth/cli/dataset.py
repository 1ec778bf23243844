"""`spectrosynth dataset`: a training dataset from (MIDI, audio) pairs, or from MIDI and a SoundFont."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import MuteOpt, NoDrumsOpt, ProgramOpt, QuietOpt, TrackOpt, friendly_errors, note


@app.command("dataset")
@friendly_errors
def dataset_command(
    pairs_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder searched (recursively) for song.mid + song.wav/.flac/.ogg/.mp3 pairs.",
            metavar="PAIRS_DIR",
        ),
    ],
    data_dir: Annotated[
        Path, typer.Argument(help="Dataset folder to create or add to (Parquet shards).", metavar="DATA_DIR")
    ],
    soundfont: Annotated[
        str | None,
        typer.Option(
            "--soundfont",
            metavar="FILE.sf2",
            help="Render the audio from the MIDI files with this SoundFont (FluidSynth) instead of reading "
            "recordings; 'builtin' is the small General MIDI font that pretty_midi ships.",
        ),
    ] = None,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            metavar="FRACTION",
            min=0.0,
            max=0.99,
            help="Set aside about this share of the songs (whole songs, chosen by name) for validation.",
        ),
    ] = 0.0,  # fmt: skip
    program: ProgramOpt = None,
    track: TrackOpt = None,
    mute: MuteOpt = None,
    no_drums: NoDrumsOpt = False,
    max_extra: Annotated[
        float,
        typer.Option(
            "--max-extra",
            metavar="SECONDS",
            min=0.0,
            help="How much longer than the MIDI's last note the audio may last (a longer one is taken for "
            "another performance); it may be up to 1 s shorter.",
        ),
    ] = 10.0,  # fmt: skip
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", metavar="N", min=1, help="Pairs processed at once, in N processes.")
    ] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Process only shard I of N (1-based, split by name): N machines (a Slurm array) build one "
            "dataset together.",
        ),
    ] = None,  # fmt: skip
    save_audio: Annotated[
        bool,
        typer.Option("--save-audio", help="Also keep each song's 16 kHz audio as DATA_DIR/audio/ID.flac."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Build a training dataset from (MIDI, audio) pairs, or render the audio with a SoundFont.

    Each song becomes one row: its notes as the model hears them and its whole log-mel spectrogram, in
    Parquet shards under DATA_DIR (docs/training.md). Run it again to resume or to add new pairs; each
    unusable pair (unreadable, silent, lengths that disagree) is reported in one line and skipped.

    Examples:

      spectrosynth dataset bounces/ data/ --holdout 0.1 --jobs 4

      spectrosynth dataset midi/ data/ --soundfont builtin --program 0-7=0 --save-audio
    """
    from spectrosynth.batch.jobs import parse_shard
    from spectrosynth.data import DatasetReader, DatasetSettings, build_dataset
    from spectrosynth.errors import SpectrosynthError
    from spectrosynth.progress import DatasetProgressDisplay

    font = None
    if soundfont is not None:
        from spectrosynth.soundfont import default_soundfont

        font = default_soundfont() if soundfont == "builtin" else Path(soundfont)
    settings = DatasetSettings(tuple(program or ()), tuple(track or ()), tuple(mute or ()), no_drums,
                               holdout, None, max_extra)  # fmt: skip
    parsed_shard = parse_shard(shard) if shard is not None else None
    began = time.monotonic()
    with DatasetProgressDisplay(quiet) as display:
        report = build_dataset(pairs_dir, data_dir, settings, soundfont=font, jobs=jobs, shard=parsed_shard,
                               save_audio=save_audio, planned=display.planned, progress=display)  # fmt: skip
    try:
        songs = DatasetReader(data_dir).songs
    except SpectrosynthError:
        songs = []
    if not songs:
        raise SpectrosynthError(
            f"no usable pairs in {pairs_dir} ({len(report.rejected)} unusable, listed above); see "
            "docs/training.md for what a pair needs"
        )
    validation = sum(s.split == "validation" for s in songs)
    for song, gain in report.attenuated:
        note(f"{song}: {-gain:.1f} dB quieter, so that its loudest bins stay under the mel's ceiling", quiet)
    note(
        f"added {len(report.added)} songs ({report.audio_seconds / 3600:.2f} h of audio) in "
        f"{time.monotonic() - began:.0f} s; {report.existing} were already there, {len(report.rejected)} "
        f"unusable; {data_dir} holds {len(songs)} songs ({len(songs) - validation} training, {validation} "
        "validation)",
        quiet,
    )
