"""The `spectrosynth` command line. Thin by design: the work happens in the library modules.

Heavy modules (torch, numpy, pretty_midi) are imported inside the commands so that `--help` is instant.
Every failure a user can cause is one line on stderr: exit code 1, or 2 for a wrong command line.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from spectrosynth.constants import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_VOCODER, SAMPLER_STEPS, VOCODERS

# click's exception classes, taken from Typer's public BadParameter so that they are the ones Typer raises
# (recent Typer versions ship their own copy of click).
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK["UsageError"], _CLICK["ClickException"]

DEBUG_ENV = "SPECTROSYNTH_DEBUG"  # set to 1 to see full tracebacks


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


PROG = "spectrosynth"


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


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"{PROG}: error: {message}", err=True)
    return typer.Exit(code)


def friendly_errors(command):
    """Turn any failure into one line on stderr and exit code 1; SPECTROSYNTH_DEBUG=1 shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from spectrosynth.errors import SpectrosynthError

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except KeyboardInterrupt:
            raise _fail("interrupted; nothing was left half-written", 130) from None
        except Exception as e:
            if _debug():
                raise
            if isinstance(e, SpectrosynthError):
                raise _fail(str(e)) from None
            if isinstance(e, OSError) and e.filename:
                raise _fail(f"{e.filename}: {e.strerror or e}") from None
            raise _fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 to see the traceback)") from None

    return wrapper


def _note(message: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(f"{PROG}: {message}", err=True)


# ---------------------------------------------------------------------------------------------------------
# Options shared between commands (one definition each, as huggingface_hub's CLI does).

MidiArg = Annotated[
    str, typer.Argument(help="MIDI file to read; '-' reads it from standard input.", metavar="SONG.mid")
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="REPO|DIR",
        help="Hub repo id, downloaded once into the Hugging Face cache, or a local model folder.",
    ),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", metavar="REV", help="Hub revision to use: a branch, tag or commit hash."),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", "-d", metavar="DEVICE", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="Precision: float32, bfloat16, float16 (CUDA only), int8 (CPU only: the decoder's products "
        "quantized), or auto: bfloat16 where the device is fast at it, else float32 (docs/performance.md).",
    ),
]
SamplerName = Enum("SamplerName", {name: name for name in SAMPLER_STEPS}, type=str)
DEFAULT_SAMPLER_NAME = SamplerName(DEFAULT_SAMPLER)
SamplerOpt = Annotated[
    SamplerName,
    typer.Option(
        "--sampler",
        help=f"How each 5.12 s segment is sampled (docs/sampling.md). {DEFAULT_SAMPLER}: fast, the default; "
        "ddpm: the authors' original (with --steps 1000); diffusers: diffusers' port, bit for bit.",
    ),
]
VocoderName = Enum("VocoderName", {name: name for name in VOCODERS}, type=str)
DEFAULT_VOCODER_NAME = VocoderName(DEFAULT_VOCODER)
VocoderOpt = Annotated[
    VocoderName,
    typer.Option(
        "--vocoder",
        help="Spectrogram to audio: model (the model's melgan/model.onnx) or griffin-lim (no file needed, "
        "for a model trained without one; much lower quality).",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        metavar="N",
        min=1,
        max=10000,
        show_default=False,
        help="Network evaluations per 5.12 s segment: fewer is faster. Default: the sampler's own ("
        + ", ".join(f"{name} {steps}" for name, steps in SAMPLER_STEPS.items())
        + ").",
    ),
]
GuidanceOpt = Annotated[
    float,
    typer.Option(
        "--guidance",
        "-g",
        metavar="W",
        min=0.0,
        max=100.0,
        help="Classifier-free guidance weight: how closely the audio follows the notes. 2 as the authors; "
        "1 turns it off (half the work per step).",
    ),
]
GuidanceIntervalOpt = Annotated[
    str,
    typer.Option(
        "--guidance-interval",
        metavar="LO,HI|full",
        help="Guide only the steps whose noise level, as log-SNR from -20 (noise) to 20 (clean), lies in "
        "[LO, HI]; the others take one decoder pass instead of two. full: every step (docs/sampling.md).",
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", metavar="N", min=0, max=2**63 - 1, help="Random seed: the same seed gives the same audio."
    ),
]
ProgramOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--program",
        metavar="FROM=TO",
        help="Play every track of General MIDI program FROM as TO (0-127 or a name: 0=40, 0=violin). "
        "Repeatable.",
    ),
]
TrackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--track", metavar="N=TO", help="Play track N (as `inspect` numbers them) as program TO. Repeatable."
    ),
]
MuteOpt = Annotated[
    list[str] | None, typer.Option("--mute", metavar="N", help="Leave out track N (or N,M,...). Repeatable.")
]
NoDrumsOpt = Annotated[bool, typer.Option("--no-drums", help="Leave out every drum track.")]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="wav|flac",
        help="Audio format. Default: from the output's extension (needed for '-').",
    ),
]
BitDepthOpt = Annotated[
    int,
    typer.Option("--bit-depth", metavar="16|24|32", help="16 or 24 (integer PCM), or 32 (float, WAV only)."),
]
SampleRateOpt = Annotated[
    int | None,
    typer.Option(
        "--sample-rate",
        "-r",
        metavar="HZ",
        min=8000,
        max=192000,
        help="Resample to this rate (e.g. 44100, 48000). Default: the model's native 16000 Hz.",
    ),
]
GainOpt = Annotated[
    float, typer.Option("--gain", metavar="DB", min=-60.0, max=60.0, help="Gain in dB applied to the audio.")
]
NormalizeOpt = Annotated[
    bool, typer.Option("--normalize/--no-normalize", help="Scale the audio so its peak is at -1 dBFS.")
]
ClipOpt = Annotated[
    str,
    typer.Option(
        "--clip",
        metavar="MODE",
        help="Beyond full scale: rescale (lower the whole file), clamp (hard-limit samples) or none.",
    ),
]
TailOpt = Annotated[
    float,
    typer.Option(
        "--tail",
        metavar="SECONDS",
        min=0.0,
        help="Seconds kept after the last note ends (the model's release).",
    ),
]
TrimOpt = Annotated[
    bool,
    typer.Option(
        "--trim/--no-trim", help="End the audio --tail seconds after the last note, not on a 5.12 s boundary."
    ),
]
StartOpt = Annotated[
    float, typer.Option("--start", metavar="SECONDS", min=0.0, help="Render from this time in seconds.")
]
DurationOpt = Annotated[
    float | None,
    typer.Option(
        "--duration", metavar="SECONDS", min=0.01, help="Render only this many seconds (a preview)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]

DEFAULT_MODEL = "google/music-spectrogram-diffusion"


def _read_score(source: str):
    from spectrosynth.midi import read_midi

    if source == "-":
        return read_midi(sys.stdin.buffer.read(), name="<stdin>")
    return read_midi(Path(source))


def _remap(program, track, mute, no_drums):
    from spectrosynth.remap import Remap

    return Remap.from_options(program or (), track or (), mute or (), no_drums)


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


# ---------------------------------------------------------------------------------------------------------
# inspect


@app.command("inspect")
@friendly_errors
def inspect_command(
    midi: MidiArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (a stable format).")
    ] = False,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Add each segment's model token ids (without padding).")
    ] = False,
    program: ProgramOpt = None,
    track: TrackOpt = None,
    mute: MuteOpt = None,
    no_drums: NoDrumsOpt = False,
) -> None:
    """Show what the model will see: duration, tracks and the instrument each renders as, segments, tokens.

    Takes the same instrument options as `render`, to check their effect first.

    Example: spectrosynth inspect song.mid --program 0=40 --json | jq '.tracks[] | {track, model_class_name}'
    """
    from spectrosynth.inspection import inspect_score

    remap = _remap(program, track, mute, no_drums)
    report = inspect_score(_read_score(midi), include_tokens=tokens, remap=remap)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(100, Console().width))
    seconds = report["duration"]
    console.print(f"[bold]{report['file']}[/bold]")
    console.print(
        f"  duration  {_clock(seconds)} ({seconds:.2f} s); renders as {report['segments']} segments of "
        f"{report['segment_seconds']} s"
    )
    console.print(f"  notes     {report['notes']} in {len(report['tracks'])} tracks")
    console.print(
        f"  tokens    longest segment {report['longest_segment_tokens']} of {report['max_segment_tokens']}"
    )
    for notice in report.get("notices", []):
        console.print(f"  note: {notice}", soft_wrap=True)
    for o in report["overflowing_segments"]:
        console.print(
            f"  [yellow]warning[/yellow]: segment {o['index']} ({o['start']:.2f}-{o['end']:.2f} s) has "
            f"{o['tokens']} tokens; events from {o['dropped_from']:.2f} s to {o['end']:.2f} s are dropped"
        )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in [("#", "right"), ("track name", "left"), ("ch", "right"), ("program", "left"),
                          ("notes", "right"), ("renders as", "left")]:  # fmt: skip
        table.add_column(name, justify=justify)
    for t in report["tracks"]:
        program = "drums" if t["is_drum"] else f"{t['program']} {t['program_name']}"
        if t.get("source_program") is not None:
            program += f" (was {t['source_program']})"
        renders = "Drums" if t["is_drum"] else f"{t['model_class_name']} ({t['model_class']})"
        if t.get("muted"):
            renders = "muted"
        channel = "?" if t["channel"] is None else str(t["channel"])
        table.add_row(str(t["track"]), t["name"] or "-", channel, program, str(t["notes"]), renders)
    if report["tracks"]:
        console.print(table)
    for i, seg in enumerate(report.get("tokens", [])):
        console.print(f"segment {i} ({len(seg)} tokens): " + " ".join(map(str, seg)), soft_wrap=True)


def _clock_hms(seconds: float) -> str:
    """h:mm:ss"""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


# ---------------------------------------------------------------------------------------------------------
# render and batch


def _output_settings(fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim):
    from spectrosynth.errors import SpectrosynthError
    from spectrosynth.outputs import OutputSettings

    if clip not in ("rescale", "clamp", "none"):
        raise typer.BadParameter(f"{clip!r} is not one of rescale, clamp, none", param_hint="'--clip'")
    fmt = fmt.lower() if fmt is not None else None
    if fmt is not None and fmt not in ("wav", "flac"):
        raise typer.BadParameter(f"{fmt!r} is not one of wav, flac", param_hint="'--format'")
    if bit_depth not in (16, 24, 32):
        raise typer.BadParameter(f"{bit_depth} is not one of 16, 24, 32", param_hint="'--bit-depth'")
    if fmt == "flac" and bit_depth == 32:
        raise SpectrosynthError("FLAC holds at most 24 bits; use --bit-depth 24 or a .wav file")
    return OutputSettings(fmt or "wav", bit_depth, sample_rate, gain, normalize, clip, tail, trim)


class ModelLoader:
    """Loads the model on first use, once, for any number of songs."""

    def __init__(
        self, model: str, revision: str | None, device: str, dtype: str, quiet: bool,
        vocoder: str = DEFAULT_VOCODER,
    ):  # fmt: skip
        from spectrosynth.pipeline import resolve_device, resolve_precision

        # Checked now, so that a wrong --device or --dtype fails before any work.
        resolved = resolve_device(device)
        precision = resolve_precision(dtype, resolved)
        self.model, self.revision, self.device, self.dtype, self.quiet = model, revision, device, dtype, quiet
        self.vocoder = vocoder
        self.description = f"{model} on {resolved} ({precision})"
        if vocoder != DEFAULT_VOCODER:
            self.description += f", {vocoder} vocoder"
        self.device_type = resolved.type
        self._synth = None

    def get(self):
        if self._synth is None:
            from spectrosynth.pipeline import Synthesizer
            from spectrosynth.weights import resolve_model

            needs_file = self.vocoder == "model"  # griffin-lim renders a folder without melgan/model.onnx
            folder = resolve_model(
                self.model, revision=self.revision, progress=not self.quiet, vocoder=needs_file
            )
            _note(f"loading {self.description}", self.quiet)
            self._synth = Synthesizer.from_pretrained(
                folder, device=self.device, dtype=self.dtype, vocoder=self.vocoder
            )
        return self._synth


def _report_written(summary, label: str, wall: float, quiet: bool) -> None:
    if summary.notice:
        _note(f"{label}: {summary.notice}", quiet)
    where = "standard output" if summary.path in (None, "-") else summary.path
    speed = summary.duration / wall if wall else 0.0
    _note(
        f"wrote {where}: {summary.duration:.1f} s at {summary.sample_rate} Hz, {summary.subtype} "
        f"in {wall:.1f} s ({speed:.2f}x real time)",
        quiet,
    )


@dataclass(frozen=True)
class Sampling:
    """--sampler, --steps (resolved to the sampler's default), --guidance and --guidance-interval, checked."""

    sampler: str
    steps: int
    guidance: float
    interval: str = "full"  # --guidance-interval, normalised ("full" or "LO,HI")

    @classmethod
    def from_options(
        cls, sampler: SamplerName, steps: int | None, guidance: float, interval: str = "full"
    ) -> Sampling:
        from spectrosynth.pipeline import resolve_sampler
        from spectrosynth.sampling import GuidanceInterval

        _, steps = resolve_sampler(sampler.value, steps, guidance)
        return cls(sampler.value, steps, guidance, str(GuidanceInterval.parse(interval)))

    def options(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "guidance": self.guidance, "guidance_interval": self.interval}


def _render_song(
    song, output: str, settings, loader: ModelLoader, *, sampling: Sampling, seed: int, force: bool,
    quiet: bool, label: str, mel_out: Path | None = None,
) -> None:  # fmt: skip
    """Render one prepared song to `output` ('-' for stdout), writing progressively and atomically."""
    from spectrosynth.outputs import SongOutput
    from spectrosynth.progress import RenderProgress

    synth = loader.get()
    began = time.monotonic()
    mel_path = None if mel_out is None else str(mel_out)
    with SongOutput(song, synth.vocoder, output, settings, force, mel_path) as out:
        with RenderProgress(label, len(song.segments), sampling.steps, quiet=quiet) as progress:
            tokens = [s.tokens for s in song.segments]
            for mel in synth.iter_mel(tokens, sampling.steps, seed, None, progress, **sampling.options()):
                out.add(mel)
        summary = out.finish()
    wall = time.monotonic() - began
    _report_written(summary, label, wall, quiet)


@app.command("render")
@friendly_errors
def render_command(
    midi: MidiArg,
    output: Annotated[
        str,
        typer.Argument(
            help="Audio file to write (.wav or .flac); '-' writes to standard output.", metavar="OUT"
        ),
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
    fmt: FormatOpt = None,
    bit_depth: BitDepthOpt = 16,
    sample_rate: SampleRateOpt = None,
    gain: GainOpt = 0.0,
    normalize: NormalizeOpt = False,
    clip: ClipOpt = "rescale",
    tail: TailOpt = 1.0,
    trim: TrimOpt = True,
    mel_out: Annotated[
        Path | None,
        typer.Option(
            "--mel-out",
            metavar="MEL.npy",
            help="Also save the log-mel spectrogram (float32, frames x 128) as .npy.",
        ),
    ] = None,
    vocoder: VocoderOpt = DEFAULT_VOCODER_NAME,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render a MIDI file to audio (16 kHz mono unless --sample-rate).

    Examples:

      spectrosynth render song.mid song.wav

      spectrosynth render song.mid song.flac --program 0=violin --mute 3 --start 30 --duration 20

      spectrosynth render song.mid song.wav --sampler ddpm --steps 1000 --guidance 2

      cat song.mid | spectrosynth render - - --format flac > song.flac
    """
    from dataclasses import replace

    from spectrosynth.audio import check_output, output_format

    settings = _output_settings(fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim)
    settings = replace(settings, fmt=output_format(output, fmt))
    sampling = Sampling.from_options(sampler, steps, guidance, guidance_interval)
    check_output(output, force)  # before any slow work
    if mel_out is not None:
        check_output(str(mel_out), force)
    remap = _remap(program, track, mute, no_drums)
    loader = ModelLoader(model, revision, device, dtype, quiet, vocoder=vocoder.value)
    from spectrosynth.songs import prepare_song

    label = "<stdin>" if midi == "-" else Path(midi).name
    song, notices = prepare_song(_read_score(midi), remap, start, duration, settings, label)
    for notice in notices:
        _note(notice, quiet)
    _render_song(
        song, output, settings, loader, sampling=sampling, seed=seed, force=force, quiet=quiet,
        label=label, mel_out=mel_out,
    )  # fmt: skip


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

    settings = _output_settings(fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim)
    sampling = Sampling.from_options(sampler, steps, guidance, guidance_interval)
    _remap(program, track, mute, no_drums)  # a bad option fails now
    render = RenderSettings(
        model, revision, dtype, sampling.sampler, sampling.steps, sampling.guidance, seed,
        tuple(program or ()), tuple(track or ()), tuple(mute or ()), no_drums, start, duration, settings,
        save_mel, vocoder=vocoder.value, guidance_interval=sampling.interval,
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
            raise _fail(
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
    for column in ("rendered", "skipped", "failed", "audio", "wall time", "x real time"):
        table.add_column(column, justify="right")
    wall = report.wall_seconds
    speed = report.audio_seconds / wall if wall > 0 else 0.0
    table.add_row(str(report.rendered), str(report.skipped), str(len(report.failed)),
                  f"{report.audio_seconds:.1f} s", f"{wall:.1f} s", f"{speed:.2f}")  # fmt: skip
    console.print(table)
    for rel, message in report.failed:
        console.print(f"failed: {message}" if rel in message else f"failed: {rel}: {message}", soft_wrap=True)
    errors = report.top_errors()
    if len(report.failed) > 1 and errors:
        console.print("most frequent errors:")
        for message, count in errors:
            console.print(f"  {count:6d}  {message}", soft_wrap=True)


@app.command("status")
@friendly_errors
def status_command(
    out_dir: Annotated[Path, typer.Argument(help="A batch's output folder.", metavar="OUT_DIR")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    errors: Annotated[
        int, typer.Option("--errors", metavar="N", min=0, help="Show the N most frequent errors.")
    ] = 10,
) -> None:
    """What a batch has done so far, from its manifest: files rendered, failed (and why), audio hours and
    throughput, across every shard, worker and run that wrote into OUT_DIR.

    Example: spectrosynth status audio/ --json | jq .audio_hours
    """
    from spectrosynth.batch import read_status
    from spectrosynth.errors import SpectrosynthError

    if not (out_dir / ".spectrosynth").is_dir():
        raise SpectrosynthError(
            f"{out_dir}: no batch manifest here; give the OUT_DIR of a spectrosynth batch"
        )
    status = read_status(out_dir, top=errors)
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=str(out_dir), title_justify="left")
    for column in ("files", "rendered", "failed", "skipped", "audio", "wall time", "x real time", "files/h",
                   "workers"):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_row(str(status.files), str(status.ok), str(status.failed), str(status.skipped),
                  _clock_hms(status.audio_seconds), _clock_hms(status.wall_seconds),
                  f"{status.real_time_factor:.2f}", f"{status.files_per_hour:.1f}",
                  str(status.workers))  # fmt: skip
    console.print(table)
    if status.errors:
        console.print("most frequent errors:")
        for message, count in status.errors:
            console.print(f"  {count:6d}  {message}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
# download


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
    _note(f"{model} is complete and checked ({size / 1e9:.2f} GB)", quiet)


# ---------------------------------------------------------------------------------------------------------
# dataset and train


def _is_main_process() -> bool:
    """False in torchrun's processes other than rank 0, which keep quiet."""
    return os.environ.get("RANK", "0") == "0"


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
        _note(f"{song}: {-gain:.1f} dB quieter, so that its loudest bins stay under the mel's ceiling", quiet)
    _note(
        f"added {len(report.added)} songs ({report.audio_seconds / 3600:.2f} h of audio) in "
        f"{time.monotonic() - began:.0f} s; {report.existing} were already there, {len(report.rejected)} "
        f"unusable; {data_dir} holds {len(songs)} songs ({len(songs) - validation} training, {validation} "
        "validation)",
        quiet,
    )


def _train_options(**given) -> dict[str, Any]:
    """The options given on the command line (None: not given), as TrainOptions fields."""
    return {k: v for k, v in given.items() if v is not None}


def _given(kind: type, *names: str, metavar: str, help: str, **limits) -> Any:
    """A `train` option whose absence is None (the run's recipe decides, or --resume keeps the stored one)."""
    return Annotated[kind | None, typer.Option(*names, metavar=metavar, help=help, **limits)]


@app.command("train")
@friendly_errors
def train_command(
    data_dir: Annotated[Path, typer.Argument(help="A dataset (spectrosynth dataset).", metavar="DATA_DIR")],
    out_dir: Annotated[Path, typer.Argument(help="Run folder: checkpoints, logs, final/", metavar="OUT_DIR")],
    config: _given(str, "--config", metavar="SIZE|FILE.json", help="From scratch: tiny, mini (default), "
                   "small, base (the authors' sizes), or a JSON file of d_model, num_layers, num_heads, "
                   "d_kv, d_ff.") = None,
    init: _given(str, "--init", metavar="REPO|DIR", help="Fine-tune this model (a hub repo id or a folder in "
                 "the published layout), e.g. google/music-spectrogram-diffusion.") = None,
    revision: RevisionOpt = None,
    mode: _given(str, "--mode", metavar="full|decoder|lora", help="full: every network; decoder: the decoder "
                 "alone, encoders frozen; lora: LoRA adapters on the decoder, merged into the saved model. "
                 "Default: full.") = None,
    max_steps: _given(int, "--max-steps", metavar="N", min=1, help="Optimizer steps in all. Default: "
                      "500000 from scratch (the original), 5000 to fine-tune.") = None,
    batch_size: _given(int, "--batch-size", "-b", metavar="N", min=1, help="Examples per optimizer step, "
                       "over all processes. Default: 32.") = None,
    grad_accum: _given(int, "--grad-accum", metavar="K", min=1, help="Micro-batches per step (each process): "
                       "less memory, the same step.") = None,
    lr: _given(float, "--lr", metavar="LR", help="Learning rate. Default: 1e-3 from scratch, 1e-4 to "
               "fine-tune.") = None,
    warmup: _given(int, "--warmup", metavar="STEPS", min=0, help="Linear warm-up steps. Default: 0 (100 for "
                   "LoRA).") = None,
    lr_schedule: _given(str, "--lr-schedule", metavar="constant|cosine|linear", help="After the warm-up: "
                        "constant (the original's, the default), or a cosine or linear decay to 0 at "
                        "--max-steps.") = None,
    optimizer: _given(str, "--optimizer", metavar="adafactor|adamw", help="Default: adafactor (as the "
                      "original), adamw for LoRA.") = None,
    grad_clip: _given(float, "--grad-clip", metavar="NORM", min=0.0, help="Clip the gradient norm (0: "
                      "never). Default: 0 (as the original), 1 for LoRA.") = None,
    precision: _given(str, "--precision", metavar="auto|float32|bfloat16", help="auto: bfloat16 autocast "
                      "where the device is fast at it (CUDA; a CPU, by a 0.1 s probe).") = None,
    dropout: _given(float, "--dropout", metavar="P", min=0.0, max=0.99, help="Network dropout. Default: "
                    "0.1.") = None,
    cfg_dropout: _given(float, "--cfg-dropout", metavar="P", min=0.0, max=0.99, help="Share of examples "
                        "trained without conditions, for guidance. Default: 0.1.") = None,
    start_rate: _given(float, "--start-rate", metavar="P", min=0.0, max=1.0, help="Share of examples that "
                       "are a song's opening, with no context (as a render's first segment). "
                       "Default: 0.05.") = None,
    lora_rank: _given(int, "--lora-rank", metavar="R", min=1, help="Default: 16.") = None,
    lora_alpha: _given(float, "--lora-alpha", metavar="A", help="Default: the rank.") = None,
    lora_targets: _given(str, "--lora-targets", metavar="attention|attention+film|all",
                         help="Default: attention.") = None,
    seed: _given(int, "--seed", metavar="N", min=0, help="Default: 0.") = None,
    val_every: _given(int, "--val-every", metavar="N", min=0, help="Validation loss every N steps (0: "
                      "never). Default: 500.") = None,
    val_examples: _given(int, "--val-examples", metavar="N", min=1, help="Default: 64.") = None,
    checkpoint_every: _given(int, "--checkpoint-every", metavar="N", min=1, help="Default: 1000.") = None,
    keep_checkpoints: _given(int, "--keep-checkpoints", metavar="K", min=1, help="Default: 3.") = None,
    log_every: _given(int, "--log-every", metavar="N", min=1, help="Default: 10.") = None,
    device: DeviceOpt = "auto",
    workers: _given(int, "--workers", metavar="N", min=0, help="Data-loading processes per training "
                    "process.") = None,
    vocoder: _given(str, "--vocoder", metavar="REPO|DIR|FILE.onnx", help="Ship final/ with this model's "
                    "SoundStream inverter. Default: the --init model's, or the published model's when it is "
                    "in the Hugging Face cache.") = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in OUT_DIR from its last checkpoint.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    """Train a model from scratch, or fine-tune one, on a dataset from `spectrosynth dataset`.

    The result is OUT_DIR/final in the published layout: render with it as with the published model.
    Ctrl-C (or SIGTERM) checkpoints and stops; --resume continues exactly where it stopped. On several
    GPUs or machines: torchrun --nproc_per_node N -m spectrosynth train ... (docs/training.md).

    Examples:

      spectrosynth train data/ runs/mine --init google/music-spectrogram-diffusion --mode lora

      spectrosynth train data/ runs/scratch --config small --batch-size 64

      spectrosynth train data/ runs/mine --resume
    """
    from spectrosynth.progress import TrainProgressDisplay
    from spectrosynth.training import TrainOptions, resumed_options, train

    given = _train_options(
        config=config, init=init, revision=revision, mode=mode, max_steps=max_steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, warmup=warmup, lr_schedule=lr_schedule, optimizer=optimizer,
        grad_clip=grad_clip, precision=precision, dropout=dropout, cfg_dropout=cfg_dropout,
        start_rate=start_rate, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        seed=seed, val_every=val_every, val_examples=val_examples, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, log_every=log_every, workers=workers, vocoder=vocoder,
    )  # fmt: skip
    if resume:
        options = resumed_options(out_dir, data_dir=str(data_dir), device=device, **given)
    else:
        options = TrainOptions(str(data_dir), str(out_dir), device=device, **given)
    quiet = quiet or not _is_main_process()
    with TrainProgressDisplay(quiet) as display:
        result = train(options, callback=display, resume=resume)
    if result.stopped:
        raise _fail(
            f"stopped at step {result.step} after writing a checkpoint; run the same command with --resume "
            "to go on",
            130,
        )
    _note(
        f"trained {result.step} steps; the model is in {result.model} (spectrosynth render song.mid out.wav "
        f"--model {result.model})",
        quiet,
    )


# ---------------------------------------------------------------------------------------------------------
# evaluate


@app.command("evaluate")
@friendly_errors
def evaluate_command(
    midi: Annotated[
        Path,
        typer.Argument(help="Folder searched (recursively) for .mid and .midi files, or one MIDI file.",
                       metavar="MIDI_DIR"),
    ],
    audio: Annotated[
        Path,
        typer.Argument(help="Folder with each one's render at the same place and name (.wav, .flac, .ogg, "
                       ".mp3), as `batch` writes it; or one audio file.", metavar="AUDIO_DIR"),
    ],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", metavar="REF_DIR", help="Folder (or file) of reference audio laid out "
                     "as AUDIO_DIR, such as recordings of the same MIDI files: adds mel_l1, the distance to "
                     "it."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the scores as JSON (a stable format).")
    ] = False,
    mute: MuteOpt = None,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    """Measure renders: note F1 against the MIDI (by transcription), seam score, mel L1 to a reference.

    note_f1: onset-only note F1 of the audio's transcription against the MIDI file's notes (50 ms, 50
    cents, drums left out); seam: the spectral change across 5.12 s segment boundaries over the change
    elsewhere, 1.0 = no seam; mel_l1: mean absolute log-mel difference to the reference. docs/quality.md
    has the definitions. A file that cannot be scored is reported in one line and the others are still
    scored; the exit code is 1 if any file failed. Needs pip install "spectrosynth[evaluate]" && pip install
    --no-deps basic-pitch==0.4.0.

    Examples:

      spectrosynth evaluate midi/ audio/

      spectrosynth evaluate midi/ audio/ --reference recordings/ --json | jq .mean

      spectrosynth evaluate song.mid song.wav
    """
    from spectrosynth.evaluation import evaluate_dirs
    from spectrosynth.evaluation.report import EvaluateProgressDisplay, print_table

    remap = _remap(None, None, mute, False)
    with EvaluateProgressDisplay(quiet) as progress:
        report = evaluate_dirs(midi, audio, reference, remap=remap, progress=progress)
    if as_json:
        typer.echo(json.dumps({"files": report["files"], "mean": report["mean"]}, indent=2))
    else:
        print_table(report, reference is not None, midi if midi.is_dir() else None)
    if report["failed"]:
        raise _fail(f"{len(report['failed'])} of {len(report['failed']) + len(report['files'])} files could "
                    "not be scored (listed above)")  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
