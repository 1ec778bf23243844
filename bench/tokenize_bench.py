"""Tokenization speed: spectrosynth (read_midi + tokenize) against the reference, diffusers' MidiProcessor.

Runs on every MIDI file in tests/data/midi and on a generated 10-minute, 8-track song (drums, sustain
pedal, about 20k notes). Each timing is the median of --repeats runs after one warm-up run; the reference
needs the test extras (`pip install -e ".[test]"`).

    .venv/bin/python bench/tokenize_bench.py [--repeats 5] [--no-long]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # for midi_builder

from midi_builder import Note, Song, Track, pedal  # noqa: E402

from spectrosynth.midi import read_midi  # noqa: E402
from spectrosynth.tokens import model_notes, tokenize  # noqa: E402

MIDI_DIR = ROOT / "tests" / "data" / "midi"


def long_song(seconds: float = 600.0, seed: int = 0) -> Song:
    """An 8-track song of `seconds` at 120 bpm: drums in 16ths, pedalled piano chords, bass, guitar, lead,
    brass, strings and organ (about 20k notes for 10 minutes)."""
    rng = random.Random(seed)
    beat = 0.5
    bars = int(seconds / (4 * beat))
    chords = [(48, 52, 55), (45, 48, 52), (41, 45, 48), (43, 47, 50)]  # C, Am, F, G

    def track(program: int, name: str, notes: list[Note], **kw) -> Track:
        return Track(notes, program=program, name=name, **kw)

    drums, piano, bass, guitar, lead, brass, strings, organ = ([] for _ in range(8))
    for bar in range(bars):
        t0 = bar * 4 * beat
        chord = chords[bar % 4]
        for i in range(16):  # sixteenths: hi-hat, kick on beats, snare on 2 and 4
            t = t0 + i * beat / 4
            drums.append(Note(42, t, t + 0.05, 70))
            if i % 4 == 0:
                drums.append(Note(36 if i % 8 == 0 else 38, t, t + 0.1, 100))
        for i in range(8):  # piano: chord on every eighth, released quickly, held by the pedal
            t = t0 + i * beat / 2
            piano.extend(Note(p + 12, t, t + 0.1, rng.randint(50, 90)) for p in chord)
        for i in range(4):
            t = t0 + i * beat
            bass.append(Note(chord[0] - 12, t, t + beat * 0.9, 90))
            brass.append(Note(chord[i % 3] + 24, t, t + beat / 2, 80))
        for i in range(8):
            t = t0 + i * beat / 2
            guitar.append(Note(chord[i % 3] + 12, t, t + beat, 70))
            lead.append(Note(rng.choice(chord) + 24 + rng.choice((0, 2, 4)), t, t + beat / 2, 90))
        strings.extend(Note(p + 12, t0, t0 + 4 * beat, 60) for p in chord)
        organ.extend(Note(p, t0 + 2 * beat, t0 + 4 * beat, 60) for p in chord)
    piano_pedal = [
        c for bar in range(bars) for c in pedal(bar * 4 * beat + 0.01, (bar + 1) * 4 * beat - 0.01)
    ]
    return Song(
        [
            Track(drums, channel=9, name="drums"),
            track(0, "piano", piano, channel=0, controls=piano_pedal),
            track(33, "bass", bass, channel=1),
            track(25, "guitar", guitar, channel=2),
            track(80, "lead", lead, channel=3),
            track(61, "brass", brass, channel=4),
            track(48, "strings", strings, channel=5),
            track(16, "organ", organ, channel=6),
        ]
    )


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def versions() -> str:
    names = ["spectrosynth", "diffusers", "note-seq", "pretty-midi", "mido", "numpy", "torch"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per file (median reported)")
    parser.add_argument("--no-long", action="store_true", help="skip the generated 10-minute song")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")  # pretty_midi's and pydub's, from the reference's imports and parse
    from diffusers import MidiProcessor

    processor = MidiProcessor()

    files = sorted(MIDI_DIR.rglob("*.mid"))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_long:
            files.append(long_song().save(Path(tmp) / "generated-10min-8tracks.mid"))
        print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
        print(f"{platform.processor() or platform.machine()}; {versions()}")
        print(f"median of {args.repeats} runs after a warm-up; times in seconds\n")

        header = (
            f"{'file':36} {'notes':>6} {'dur s':>7} {'segs':>5} {'reference':>10} {'ours':>8}"
            f" {'speed-up':>8} {'parse':>8} {'tokens':>8}"
        )
        print(header)
        print("-" * len(header))
        totals = [0.0, 0.0, 0.0, 0.0]
        for path in files:
            name = str(path.relative_to(MIDI_DIR)) if path.is_relative_to(MIDI_DIR) else path.name
            ref_s, ref = median_time(lambda p=path: processor(p), args.repeats)
            ours_s, segments = median_time(lambda p=path: tokenize(read_midi(p)), args.repeats)
            parse_s, score = median_time(lambda p=path: read_midi(p), args.repeats)
            tokens_s, _ = median_time(lambda s=score: tokenize(s), args.repeats)
            duration = model_notes(score)[1]
            assert len(segments) == len(ref), f"{name}: {len(segments)} segments, reference {len(ref)}"
            if path.is_relative_to(MIDI_DIR):
                totals = [a + b for a, b in zip(totals, (ref_s, ours_s, parse_s, tokens_s), strict=True)]
            print(
                f"{name:36} {len(score.notes):>6} {duration:>7.2f} {len(segments):>5} {ref_s:>10.4f}"
                f" {ours_s:>8.4f} {ref_s / ours_s:>7.1f}x {parse_s:>8.4f} {tokens_s:>8.4f}"
            )
        print("-" * len(header))
        ref_s, ours_s, parse_s, tokens_s = totals
        print(
            f"{'all of tests/data/midi':36} {'':>6} {'':>7} {'':>5} {ref_s:>10.4f} {ours_s:>8.4f}"
            f" {ref_s / ours_s:>7.1f}x {parse_s:>8.4f} {tokens_s:>8.4f}"
        )
        print("\nparse = read_midi (mido + pretty_midi); tokens = tokenize (sustain, segments, codes)")


if __name__ == "__main__":
    main()
