"""General MIDI programs and the instrument classes the model renders.

The model was trained on a fixed set of instrument classes (the Slakh2100 classes). Every non-drum General
MIDI program is rendered as the class with the largest class program that is <= the program, exactly as the
reference pipeline maps them: program 40 (Violin) stays a violin, program 45 (Pizzicato Strings) becomes
class 43 (Contrabass), program 19 (Church Organ) becomes class 16 (Organ). Drums (MIDI channel 10) keep
their own drum vocabulary.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import sys


def _guard_pretty_midi() -> None:
    """pretty_midi imports FluidSynth's Python binding (pyfluidsynth) whenever it is installed, and copes only
    with an ImportError: a binding whose C library cannot be loaded (an OSError) would make every MIDI file
    unreadable. Then the binding is marked missing, so pretty_midi does without it (and `--soundfont` says
    what to install). The binding prints where it found the library to stdout when the environment has CI
    set (as every CI service does), which would corrupt `--json` output and piped audio: that print is
    swallowed."""
    if "fluidsynth" in sys.modules:
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth  # noqa: F401
    except ImportError:
        pass
    except OSError:
        sys.modules["fluidsynth"] = None  # `import fluidsynth` now raises ImportError


_guard_pretty_midi()
import pretty_midi  # noqa: E402

# The model's instrument classes: class program -> class name (diffusers' SLAKH_CLASS_PROGRAMS).
MODEL_CLASSES: dict[int, str] = {
    0: "Acoustic Piano",
    4: "Electric Piano",
    8: "Chromatic Percussion",
    16: "Organ",
    24: "Acoustic Guitar",
    26: "Clean Electric Guitar",
    29: "Distorted Electric Guitar",
    32: "Acoustic Bass",
    33: "Electric Bass",
    40: "Violin",
    41: "Viola",
    42: "Cello",
    43: "Contrabass",
    46: "Orchestral Harp",
    47: "Timpani",
    48: "String Ensemble",
    50: "Synth Strings",
    52: "Choir and Voice",
    55: "Orchestral Hit",
    56: "Trumpet",
    57: "Trombone",
    58: "Tuba",
    60: "French Horn",
    61: "Brass Section",
    64: "Soprano/Alto Sax",
    66: "Tenor Sax",
    67: "Baritone Sax",
    68: "Oboe",
    69: "English Horn",
    70: "Bassoon",
    71: "Clarinet",
    73: "Pipe",
    80: "Synth Lead",
    88: "Synth Pad",
}
_CLASS_PROGRAMS = sorted(MODEL_CLASSES)
DRUMS_CLASS_NAME = "Drums"


def program_to_class(program: int) -> int:
    """The class program a non-drum GM program (0..127) is rendered as."""
    if not 0 <= program <= 127:
        raise ValueError(f"MIDI program {program} outside 0..127")
    return _CLASS_PROGRAMS[bisect.bisect_right(_CLASS_PROGRAMS, program) - 1]


def program_name(program: int) -> str:
    """General MIDI name of a program (0-based), e.g. 0 -> 'Acoustic Grand Piano'."""
    return pretty_midi.program_to_instrument_name(program)


def class_name(program: int, is_drum: bool = False) -> str:
    """Name of the model class a program is rendered as."""
    return DRUMS_CLASS_NAME if is_drum else MODEL_CLASSES[program_to_class(program)]
