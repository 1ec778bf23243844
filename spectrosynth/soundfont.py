"""MIDI notes -> audio with a SoundFont, through FluidSynth: (MIDI, audio) training pairs without recordings.

    from spectrosynth.midi import read_midi
    from spectrosynth.soundfont import default_soundfont, render_score
    rendering = render_score(read_midi("song.mid"), default_soundfont(), sample_rate=16000)
    rendering.audio, rendering.sample_rate, rendering.gain

Needs the Python binding `pyfluidsynth` (module `fluidsynth`) and the FluidSynth C library
(Debian/Ubuntu: ``apt install libfluidsynth3``; macOS: ``brew install fluid-synth``). Both are imported on
first use only, so `import spectrosynth` does not need them.

How a `Score` is played:

1. Each (track, program) of the notes gets its own FluidSynth channel, so programs and sustain pedals never
   mix across tracks. The synth has as many channels as needed, up to 256 (FluidSynth's maximum). Drum
   tracks (bank 128, the note's program as the kit, kit 0 if the soundfont lacks it) take channel 9, the
   General MIDI drum channel, then 25, 41, ... (9 + 16 k); melodic tracks take the other channels, never 9.
   Only past 256 (track, program) pairs (no real file has them) are channels reused, round-robin, and the
   tracks sharing one then share its program and pedal.
2. Events are played in time order; at equal times sustain-pedal changes come first (as note-seq orders
   them), then note-offs, then note-ons, as MIDI players do. A zero-length note (end == start) is struck
   and released at once, so it sounds its release. Velocities are the notes' own (1..127).
3. Sustain pedals (CC64, `Score.pedals`) go to the channels of their track; drum tracks ignore the pedal,
   as note-seq (and so the model's tokenizer) does.
4. FluidSynth renders the samples between events in one synth, reverb and chorus off (dry and
   deterministic: the same score, soundfont and rate give the same samples, bit for bit). Events take
   effect at FluidSynth's internal 64-sample block boundary: onsets can be up to 63 samples (1.4 ms at
   44.1 kHz, 3.9 ms at 16 kHz) late, never early. FluidSynth reuses voices, and the first milliseconds of
   an attack depend a little on what the voice played before: a track rendered alone is close to, but not
   bit for bit, its part of the full mix.
5. Output: stereo mixed to mono by averaging, float32. Only notes, programs and the sustain pedal are
   played: a `Score` carries no volume, pan, expression or pitch-bend controllers.

Float rendering: pyfluidsynth's `Synth.get_samples` only wraps `fluid_synth_write_s16` (16-bit, dithered);
the C library's `fluid_synth_write_float` is called here through pyfluidsynth's ctypes handle
(`fluidsynth._fl`) instead: no 16-bit quantisation or dither noise, and samples above full scale survive
until the final scaling instead of being clipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import SUSTAIN_CC, Score, apply_sustain

# FluidSynth's master gain (synth.gain; its default is 0.2). With TimGM6mb, 0.4 puts a dense piece
# (example_complex.mid, 18 tracks with drums) at about -3 dBFS and a two-track folk tune at about -18 dBFS;
# louder renders are scaled down as a whole (`SoundfontRendering.gain`).
SYNTH_GAIN = 0.4
POLYPHONY = 1024  # voices before FluidSynth steals the oldest (its default, 256, is reached by dense pieces)
MAX_CHANNELS = 256  # FluidSynth's maximum synth.midi-channels
DRUM_CHANNEL = 9  # 0-based General MIDI channel 10
DRUM_BANK = 128
MIN_RATE, MAX_RATE = 8000, 96000  # FluidSynth's synth.sample-rate range

INSTALL = (
    "pip install pyfluidsynth, and the FluidSynth library: "
    "apt install libfluidsynth3 / brew install fluid-synth"
)

# Event kinds; their order breaks ties at equal times.
_PEDAL, _NOTE_OFF, _NOTE_ON, _RELEASE = range(4)  # _RELEASE: the note-off of a zero-length note
_FLUID_WARN = 2  # FluidSynth log levels 0 (panic), 1 (error) and 2 (warning) are captured while loading
_LOG_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SET_LOG = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_LOG_LOCK = threading.Lock()
_WRITE_FLOAT_ARGS = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
_WRITE_FLOAT_ARGS += (ctypes.c_void_p, ctypes.c_int, ctypes.c_int)


@dataclass(frozen=True)
class SoundfontRendering:
    """A rendered score."""

    audio: np.ndarray  # (samples,) float32 mono, peak <= 1.0
    sample_rate: int  # Hz
    gain: float  # scale applied after synthesis to keep the peak <= 1.0; 1.0 when the render did not clip

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / self.sample_rate


def default_soundfont() -> Path:
    """The small General MIDI SoundFont shipped with pretty_midi (TimGM6mb.sf2, 6 MB)."""
    spec = importlib.util.find_spec("pretty_midi")  # found, not imported (pretty_midi imports fluidsynth)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0] if folders else "pretty_midi") / "TimGM6mb.sf2"
    if not path.is_file():
        raise SpectrosynthError(
            f"{path}: pretty_midi's TimGM6mb.sf2 is missing; reinstall pretty_midi "
            "(pip install --force-reinstall pretty-midi) or give the path of a .sf2 file"
        )
    return path


def render_score(
    score: Score, soundfont: str | os.PathLike, sample_rate: int = 44100, tail: float = 1.0
) -> SoundfontRendering:
    """Render a score with a SoundFont to mono float32 audio at `sample_rate` Hz.

    The audio lasts until `tail` seconds after the last note end, counted after the sustain pedal as the
    model's tokenizer counts it (`spectrosynth.midi.apply_sustain`; without a pedal, the last note end):
    round((end + tail) * sample_rate) samples. A score without notes gives `tail` seconds of silence.
    The synth's gain (`SYNTH_GAIN`) keeps typical pieces below full scale; a render whose peak still
    exceeds 1.0 is scaled down as a whole to peak 1.0, and the scale is returned as `gain`.

    Raises SpectrosynthError (one line) when pyfluidsynth or the FluidSynth library is missing, or the
    soundfont is missing, is not a SoundFont FluidSynth can load, or lacks a preset that the score needs
    (a melodic program or drum kit falls back to program 0 of its bank first); ValueError for a
    `sample_rate` outside 8000..96000 Hz or a negative `tail`.
    """
    if not isinstance(sample_rate, int | np.integer) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(
            f"sample_rate must be a whole number of Hz in {MIN_RATE}..{MAX_RATE}, not {sample_rate}"
        )
    if not math.isfinite(tail) or tail < 0:
        raise ValueError(f"tail must be a number of seconds >= 0, not {tail}")
    sample_rate = int(sample_rate)
    path = _check_soundfont(soundfont)
    fluidsynth, write_float = _fluidsynth()

    _, end = apply_sustain(score.notes, score.pedals, max((n.end for n in score.notes), default=0.0))
    total = round((end + tail) * sample_rate)
    channels = _assign_channels(score.notes)
    events = _events(score, channels)

    left = np.zeros(total, np.float32)
    right = np.zeros(total, np.float32)
    synth = fluidsynth.Synth(
        gain=SYNTH_GAIN,
        samplerate=float(sample_rate),
        channels=_channel_count(channels),
        **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.polyphony": POLYPHONY},
    )
    try:
        if not synth.synth:
            raise SpectrosynthError("FluidSynth could not create a synthesizer (out of memory?)")
        with _captured_log(fluidsynth) as log:
            sfid = synth.sfload(str(path))
        if sfid < 0:
            reason = f" (FluidSynth: {log[0]})" if log else ""
            raise SpectrosynthError(
                f"{path}: not a SoundFont FluidSynth can load{reason}; give a .sf2 or .sf3 file"
            )
        for (_, program, is_drum), channel in channels.items():
            _select_program(fluidsynth, synth, channel, sfid, program, is_drum, path)

        def render_until(stop: int) -> None:
            nonlocal position
            if stop > position:
                write_float(synth.synth, stop - position, left.ctypes.data, position, 1,
                            right.ctypes.data, position, 1)  # fmt: skip
                position = stop

        position = 0
        for time, kind, channel, key, value in events:
            render_until(min(max(round(time * sample_rate), 0), total))
            if kind == _PEDAL:
                synth.cc(channel, SUSTAIN_CC, value)
            elif kind == _NOTE_ON:
                synth.noteon(channel, key, value)
            else:
                synth.noteoff(channel, key)
        render_until(total)
    finally:
        synth.delete()

    audio = left
    audio += right
    audio *= 0.5
    peak = float(np.max(np.abs(audio))) if total else 0.0
    gain = 1.0
    if peak > 1.0:
        gain = 1.0 / peak
        audio *= np.float32(gain)
        np.clip(audio, -1.0, 1.0, out=audio)  # float32 rounding of the scale
    return SoundfontRendering(audio, sample_rate, gain)


# ---------------------------------------------------------------------------------------------------------


def _fluidsynth():
    """The `fluidsynth` module and a ctypes prototype of `fluid_synth_write_float`."""
    try:
        # pyfluidsynth may print or warn while looking for the library; keep that off the user's terminal.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fluidsynth
    except ModuleNotFoundError as e:
        if e.name != "fluidsynth":
            raise _missing(f"pyfluidsynth could not be imported ({e})") from e
        raise _missing("the Python package pyfluidsynth is not installed") from e
    except (ImportError, OSError) as e:  # pyfluidsynth raises ImportError when it cannot find the library
        raise _missing(
            f"the FluidSynth library could not be loaded ({str(e).strip() or type(e).__name__})"
        ) from e
    library = getattr(fluidsynth, "_fl", None)
    if not hasattr(fluidsynth, "Synth") or library is None:
        raise _missing("the module 'fluidsynth' found is not pyfluidsynth")
    if not hasattr(library, "fluid_synth_write_float"):
        raise _missing("the FluidSynth library found lacks fluid_synth_write_float (FluidSynth 2 is needed)")
    write_float = ctypes.CFUNCTYPE(ctypes.c_int, *_WRITE_FLOAT_ARGS)(("fluid_synth_write_float", library))
    return fluidsynth, write_float


def _missing(reason: str) -> SpectrosynthError:
    return SpectrosynthError(f"soundfont rendering needs FluidSynth: {reason}; install it: {INSTALL}")


def _check_soundfont(soundfont: str | os.PathLike) -> Path:
    path = Path(soundfont)
    if not path.exists():
        raise SpectrosynthError(f"{path}: no such soundfont; check the path, or give a .sf2 file")
    if not path.is_file():
        raise SpectrosynthError(f"{path}: is a folder, not a soundfont; give the path of a .sf2 file")
    if not os.access(path, os.R_OK):
        raise SpectrosynthError(f"{path}: the soundfont cannot be read; check its permissions")
    return path


@contextlib.contextmanager
def _captured_log(fluidsynth) -> Iterator[list[str]]:
    """Collect FluidSynth's errors and warnings (instead of printing them to stderr) for the block."""
    library = fluidsynth._fl
    messages: list[str] = []
    if not hasattr(library, "fluid_set_log_function"):
        yield messages
        return
    set_log = _SET_LOG(("fluid_set_log_function", library))

    def collect(level, message, data):
        messages.append((message or b"").decode("utf-8", "replace").strip())

    callback = _LOG_FUNCTION(collect)
    # The logger is process-wide: the lock keeps threads from restoring each other's (freed) callbacks.
    with _LOG_LOCK:
        levels = range(_FLUID_WARN + 1)
        previous = [set_log(level, ctypes.cast(callback, ctypes.c_void_p), None) for level in levels]
        try:
            yield messages
        finally:
            for level, function in zip(levels, previous, strict=True):  # the default logger has no data
                set_log(level, function, None)


def _select_program(
    fluidsynth, synth, channel: int, sfid: int, program: int, is_drum: bool, path: Path
) -> None:
    bank = DRUM_BANK if is_drum else 0
    with _captured_log(fluidsynth):
        for preset in dict.fromkeys((program, 0)):
            if synth.program_select(channel, sfid, bank, preset) == 0:
                return
    what = f"drum kit {program} (bank {bank})" if is_drum else f"program {program} (bank 0)"
    raise SpectrosynthError(
        f"{path}: the soundfont has no preset for {what}, nor program 0 of that bank; "
        "use a General MIDI soundfont"
    )


def _assign_channels(notes) -> dict[tuple[int, int, bool], int]:
    """FluidSynth channel of each (track, program, is_drum) of the notes, in order of first appearance."""
    keys = list(dict.fromkeys((n.track, n.program, n.is_drum) for n in notes))
    drum_pool = list(range(DRUM_CHANNEL, MAX_CHANNELS, 16))
    melodic_pool = [c for c in range(MAX_CHANNELS) if c % 16 != DRUM_CHANNEL]
    drums = [k for k in keys if k[2]]
    melodic = [k for k in keys if not k[2]]
    # Drums first on 9 + 16 k, then on unused melodic channels; melodic on the rest; round-robin beyond.
    spare = melodic_pool[len(melodic) :]
    drum_channels = drum_pool + spare
    melodic_channels = melodic_pool + drum_pool[max(1, len(drums)) :]  # never channel 9
    channels = {k: drum_channels[i % len(drum_channels)] for i, k in enumerate(drums)}
    channels.update({k: melodic_channels[i % len(melodic_channels)] for i, k in enumerate(melodic)})
    return channels


def _channel_count(channels: dict) -> int:
    """synth.midi-channels: enough for the highest channel used, in FluidSynth's steps of 16."""
    highest = max(channels.values(), default=0)
    return min(MAX_CHANNELS, (highest // 16 + 1) * 16)


def _events(
    score: Score, channels: dict[tuple[int, int, bool], int]
) -> list[tuple[float, int, int, int, int]]:
    """(time, kind, channel, key, value) of every note and pedal change, in playing order."""
    events = []
    for n in score.notes:
        channel = channels[(n.track, n.program, n.is_drum)]
        events.append((n.start, _NOTE_ON, channel, n.pitch, min(max(n.velocity, 1), 127)))
        if n.end > n.start:
            events.append((n.end, _NOTE_OFF, channel, n.pitch, 0))
        else:
            events.append((n.start, _RELEASE, channel, n.pitch, 0))
    pedal_channels: dict[int, list[int]] = {}
    for (track, _, is_drum), channel in channels.items():
        if not is_drum:
            pedal_channels.setdefault(track, []).append(channel)
    for p in score.pedals:
        for channel in pedal_channels.get(p.track, ()):
            events.append((p.time, _PEDAL, channel, SUSTAIN_CC, min(max(p.value, 0), 127)))
    events.sort(key=lambda e: (e[0], e[1]))  # stable: pedal changes keep their order
    return events
