"""What several commands share: one-line errors (`friendly_errors`, `fail`, `note`, SPECTROSYNTH_DEBUG), the
options more than one command takes (one definition each, as huggingface_hub's CLI does), DEFAULT_MODEL,
reading a score and the instrument options, the output settings, the model loader and the sampling options,
clocks, and whether this is torchrun's main process.

Nothing heavy is imported here: torch, numpy and pretty_midi only inside the functions, when a command runs.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from spectrosynth.constants import DEFAULT_SAMPLER, DEFAULT_VOCODER, SAMPLER_STEPS, VOCODERS

# click's exception classes, taken from Typer's public BadParameter so that they are the ones Typer raises
# (recent Typer versions ship their own copy of click).
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK["UsageError"], _CLICK["ClickException"]

DEBUG_ENV = "SPECTROSYNTH_DEBUG"  # set to 1 to see full tracebacks


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


PROG = "spectrosynth"


def fail(message: str, code: int = 1) -> typer.Exit:
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
            raise fail("interrupted; nothing was left half-written", 130) from None
        except Exception as e:
            if _debug():
                raise
            if isinstance(e, SpectrosynthError):
                raise fail(str(e)) from None
            if isinstance(e, OSError) and e.filename:
                raise fail(f"{e.filename}: {e.strerror or e}") from None
            raise fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 to see the traceback)") from None

    return wrapper


def note(message: str, quiet: bool = False) -> None:
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
        metavar="REPO|DIR|base|small",
        help="Hub repo id, downloaded once into the Hugging Face cache, or a local model folder; base (the "
        "published model) or small (the authors' small model, downloaded and converted once).",
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
ChannelsOpt = Annotated[
    int,
    typer.Option(
        "--channels",
        metavar="1|2",
        help="1: the model's mono render of the whole song. 2: stereo, each track rendered alone and placed "
        "by its MIDI pan (CC10, constant power), volume (CC7) and expression (CC11), as they change.",
    ),
]
LoudnessOpt = Annotated[
    float | None,
    typer.Option(
        "--loudness",
        metavar="LUFS",
        min=-70.0,
        max=0.0,
        show_default=False,
        help="Normalise the integrated loudness (ITU-R BS.1770-4) to this many LUFS, e.g. -14 (streaming) or "
        "-23 (EBU R128), never putting the peak above -1 dBFS. Instead of --normalize.",
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
CacheSizeOpt = Annotated[
    str,
    typer.Option(
        "--cache-size",
        metavar="SIZE",
        help="Keep rendered segments up to this size (500M, 2G; 0: none), least recently used out first, so "
        "that rendering a song again after an edit samples only from the first segment that changed.",
    ),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", help="Neither take segments from the segment cache nor keep them there."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]

DEFAULT_MODEL = "google/music-spectrogram-diffusion"


def read_score(source: str):
    from spectrosynth.midi import read_midi

    if source == "-":
        return read_midi(sys.stdin.buffer.read(), name="<stdin>")
    return read_midi(Path(source))


def remap_from_options(program, track, mute, no_drums):
    from spectrosynth.remap import Remap

    return Remap.from_options(program or (), track or (), mute or (), no_drums)


def clock_hms(seconds: float) -> str:
    """h:mm:ss"""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def output_settings(
    fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim, channels=1, loudness=None
):
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
    if channels not in (1, 2):
        raise typer.BadParameter(f"{channels} is not one of 1, 2", param_hint="'--channels'")
    if loudness is not None and normalize:
        raise typer.BadParameter("--normalize sets the peak, --loudness the loudness; give one of them",
                                 param_hint="'--loudness'")  # fmt: skip
    return OutputSettings(fmt or "wav", bit_depth, sample_rate, gain, normalize, clip, tail, trim, channels,
                          loudness)  # fmt: skip


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
            note(f"loading {self.description}", self.quiet)
            self._synth = Synthesizer.from_pretrained(
                folder, device=self.device, dtype=self.dtype, vocoder=self.vocoder
            )
        return self._synth


def segment_cache(size: str, off: bool):
    """The segment cache for --cache-size and --no-cache (spectrosynth.segment_cache), or None when it is
    off: --no-cache, a size of 0, or SPECTROSYNTH_CACHE=off. A size that does not parse is a usage error."""
    from spectrosynth.segment_cache import SegmentCache, parse_size

    try:
        limit = parse_size(size)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--cache-size'") from None
    return None if off else SegmentCache.default(limit)


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


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0, which keep quiet."""
    return os.environ.get("RANK", "0") == "0"
