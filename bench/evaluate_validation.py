"""Does `spectrosynth evaluate` measure what it claims? Its scores on renders whose quality is known.

For each song (Nottingham folk tunes and two note-seq test songs from tests/data/midi), the audio is:

- ground truth: the MIDI rendered with FluidSynth and pretty_midi's General MIDI soundfont (TimGM6mb) at
  16 kHz, the whole song and 1 s after its last note. It plays exactly the notes of the file.
- ground truth, first 20 s: the same cut to 20 s (three segment boundaries), as the tests use it.
- delayed 100 ms: the ground truth with 100 ms of silence in front (every onset 50 ms past the tolerance).
- semitone up: the MIDI transposed up a semitone and rendered so, scored against the original MIDI.
- segments 3 dB apart: the ground truth with every other 5.12 s segment 3 dB quieter (a pure level seam).
- white noise: Gaussian noise of the ground truth's length and RMS.
- random tiny model: `spectrosynth.testing`'s random "tiny" checkpoint (seed 0) rendering the MIDI with the
  default sampler (UniPC, 20 steps, guidance 2, seed 0), whole 5.12 s segments. It renders noise-like
  spectrograms, nothing of the notes.

Every score is computed as `spectrosynth evaluate` computes it (spectrosynth.evaluation.evaluate_audio),
mel_l1 against the ground truth render (the 20 s cut against the same 20 s of it). The means, spreads and
extremes over the songs go to bench/results/evaluate_validation.json with the machine and the versions;
docs/quality.md quotes them. For the ground truth it also records the seam score's rejected variant (the
mean over the boundaries, `seam_mean_over_boundaries`) and what the transcribed notes that match no MIDI
note are (`extra_notes`), and the ground-truth scores of a dense 18-track arrangement with drums.

    .venv/bin/python bench/evaluate_validation.py      # about 10 minutes on a 2-core CPU (FluidSynth needed)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np

from spectrosynth.constants import FRAMES_PER_SEGMENT, SAMPLE_RATE, SAMPLES_PER_SEGMENT
from spectrosynth.evaluation import default_transcriber, evaluate_audio, reference_notes, spectral_change
from spectrosynth.evaluation.metrics import SEAM_LAG
from spectrosynth.features import log_mel_spectrogram
from spectrosynth.midi import Score, read_midi
from spectrosynth.soundfont import default_soundfont, render_score

ROOT = Path(__file__).resolve().parents[1]
MIDI = ROOT / "tests" / "data" / "midi"
SONGS = [f"nottingham/waltzes{i}.mid" for i in range(1, 6)] + [f"nottingham/xmas{i}.mid" for i in range(1, 6)]
SONGS += ["note-seq/english1.mid", "note-seq/english2.mid"]
# A dense 18-track General MIDI arrangement with drums: ground truth only, to show the transcriber's limits.
DENSE = "note-seq/example_complex.mid"
OUT = ROOT / "bench" / "results" / "evaluate_validation.json"
SCORES = ("note_f1", "precision", "recall", "seam", "mel_l1")
EXTRA = ("seam_mean_over_boundaries",)
CONDITIONS = {
    "ground_truth": "FluidSynth + TimGM6mb render of the MIDI, the whole song",
    "ground_truth_20s": "the ground truth, first 20 s",
    "delayed_100ms": "the ground truth with 100 ms of silence in front",
    "semitone_up": "the MIDI transposed up a semitone, rendered, scored against the original MIDI",
    "segments_3db": "the ground truth with every other 5.12 s segment 3 dB quieter",
    "white_noise": "Gaussian white noise, the ground truth's length and RMS",
    "random_tiny_model": "spectrosynth.testing's random tiny checkpoint, UniPC 20 steps, guidance 2",
}


def machine() -> str:
    """The CPU's model name, core count and matrix features (spectrosynth.precision)."""
    from spectrosynth.precision import cpu_matrix_features

    flags = cpu_matrix_features()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs ({', '.join(flags) or 'no AVX2'})"


def transposed(score: Score, semitones: int) -> Score:
    notes = [n if n.is_drum else replace(n, pitch=min(127, max(0, n.pitch + semitones))) for n in score.notes]
    return replace(score, notes=notes)


def soundfont(score: Score) -> np.ndarray:
    return render_score(score, default_soundfont(), SAMPLE_RATE).audio


def summary(values: list[float | None]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values), "min": min(values),
            "max": max(values), "n": len(values)}  # fmt: skip


def seam_with_mean(audio: np.ndarray) -> float | None:
    """The seam score's rejected variant: the mean (not the median) of the change over the boundaries,
    over the median elsewhere. It is biased upwards on audio without seams (docs/quality.md)."""
    mel = log_mel_spectrogram(audio)
    boundaries = np.arange(FRAMES_PER_SEGMENT, len(mel), FRAMES_PER_SEGMENT)
    if not len(boundaries):
        return None
    change, k = spectral_change(mel), np.arange(SEAM_LAG, len(mel))
    near = np.isin(k, np.concatenate([boundaries - 1, boundaries, boundaries + 1]))
    return float(np.mean(change[boundaries - SEAM_LAG]) / np.median(change[~near]))


def extra_notes(score: Score, audio: np.ndarray, transcriber) -> dict[str, int]:
    """What basic-pitch's transcribed notes that match no reference note are, relative to the reference
    notes sounding at their onset: a harmonic (12, 19, 24, 28 or 31 semitones above one), the same pitch as
    one (a held note heard struck again), an octave below one, or none of these."""
    import mir_eval

    from spectrosynth.evaluation.metrics import _hz, _intervals

    ref, est = reference_notes(score), transcriber(audio, SAMPLE_RATE)
    matched = {j for _, j in mir_eval.transcription.match_notes(
        _intervals(ref), _hz(ref[:, 2]), _intervals(est), _hz(est[:, 2]), offset_ratio=None)}  # fmt: skip
    kinds = dict.fromkeys(("harmonic", "same_pitch_held", "octave_below", "other"), 0)
    for j in sorted(set(range(len(est))) - matched):
        onset, pitch = est[j, 0], est[j, 2]
        sounding = ref[(ref[:, 0] <= onset + 0.05) & (ref[:, 1] >= onset)]
        above = set((pitch - sounding[:, 2]).astype(int).tolist())
        kind = "same_pitch_held" if 0 in above else "harmonic" if above & {12, 19, 24, 28, 31} else None
        kinds[kind or ("octave_below" if -12 in above else "other")] += 1
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=len(SONGS), help="use only the first N songs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from spectrosynth.pipeline import Synthesizer
    from spectrosynth.testing import write_checkpoint

    transcriber = default_transcriber()
    tiny = Synthesizer.from_pretrained(
        write_checkpoint(tempfile.mkdtemp(prefix="evaluate-tiny-"), "tiny", seed=0), device="cpu",
        dtype="float32", progress=False,
    )  # fmt: skip
    rows: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    audio_seconds = evaluate_seconds = 0.0
    for rel in SONGS[: args.songs]:
        path = MIDI / rel
        score = read_midi(path)
        truth = soundfont(score)
        rng = np.random.default_rng(len(rows["ground_truth"]))
        rms = float(np.sqrt(np.mean(truth.astype(np.float64) ** 2)))
        quieter = truth.copy()
        for start in range(SAMPLES_PER_SEGMENT, len(quieter), 2 * SAMPLES_PER_SEGMENT):
            quieter[start : start + SAMPLES_PER_SEGMENT] *= np.float32(10 ** (-3 / 20))
        began = time.monotonic()
        model_audio = tiny.render(path, seed=0).audio
        render_seconds = time.monotonic() - began
        cases = {
            "ground_truth": (score, truth),
            "ground_truth_20s": (score, truth[: 20 * SAMPLE_RATE]),
            "delayed_100ms": (score, np.concatenate([np.zeros(SAMPLE_RATE // 10, np.float32), truth])),
            "semitone_up": (score, soundfont(transposed(score, 1))),
            "segments_3db": (score, quieter),
            "white_noise": (score, (rng.standard_normal(len(truth)) * rms).astype(np.float32)),
            "random_tiny_model": (score, model_audio),
        }
        for name, (reference_score, audio) in cases.items():
            reference = truth[: len(audio)] if name == "ground_truth_20s" else truth
            began = time.monotonic()
            scores = evaluate_audio(reference_score, audio, SAMPLE_RATE, reference, transcriber=transcriber)
            evaluate_seconds += time.monotonic() - began
            audio_seconds += len(audio) / SAMPLE_RATE
            rows[name].append({"song": rel, "seconds": round(len(audio) / SAMPLE_RATE, 2), **scores})
            if name == "ground_truth":
                rows[name][-1]["seam_mean_over_boundaries"] = seam_with_mean(audio)
                rows[name][-1]["extra_notes"] = extra_notes(score, audio, transcriber)
        line = ", ".join(f"{n} {rows[n][-1]['note_f1']:.3f}/{rows[n][-1]['seam'] or 0:.2f}" for n in cases)
        print(f"{rel}: note F1/seam: {line} (tiny render {render_seconds:.0f} s)", flush=True)

    dense_score = read_midi(MIDI / DENSE)
    dense_truth = soundfont(dense_score)
    dense = {"song": DENSE, "seconds": round(len(dense_truth) / SAMPLE_RATE, 2),
             **evaluate_audio(dense_score, dense_truth, SAMPLE_RATE, transcriber=transcriber)}  # fmt: skip
    print(f"{DENSE}: ground truth {dense}", flush=True)

    result = {
        "machine": machine(),
        "versions": {name: version(name) for name in ("basic-pitch", "onnxruntime", "mir_eval", "librosa")},
        "songs": SONGS[: args.songs],
        "evaluate_x_real_time": audio_seconds / evaluate_seconds,
        "conditions": {
            name: {
                "description": CONDITIONS[name],
                "summary": {
                    key: summary([r.get(key) for r in rows[name]])
                    for key in SCORES + EXTRA
                    if any(key in r for r in rows[name])
                },
                "songs": rows[name],
            }
            for name in CONDITIONS
        },
        "dense_ground_truth": dense,
        "ground_truth_extra_notes": {
            kind: sum(r["extra_notes"][kind] for r in rows["ground_truth"])
            for kind in rows["ground_truth"][0]["extra_notes"]
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'condition':20s} " + " ".join(f"{key:>16s}" for key in SCORES))
    for name, condition in result["conditions"].items():
        cells = []
        for key in SCORES:
            s = condition["summary"].get(key, {"mean": None})
            cells.append(
                f"{s['mean']:.3f}±{s['sd']:.3f}".rjust(16) if s["mean"] is not None else " " * 15 + "-"
            )
        print(f"{name:20s} " + " ".join(cells))
    rejected = result["conditions"]["ground_truth"]["summary"]["seam_mean_over_boundaries"]
    print(f"ground truth seam with a mean over the boundaries: {rejected['mean']:.3f}±{rejected['sd']:.3f}")
    print(f"ground truth: transcribed notes that match none: {result['ground_truth_extra_notes']}")
    print(f"evaluate ran at {result['evaluate_x_real_time']:.1f}x real time; wrote {args.out}")


if __name__ == "__main__":
    main()
