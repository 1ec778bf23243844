"""The training demonstration: a small model trained from scratch on a CPU, start to finish, in one command.

    make demo                                   # = .venv/bin/python bench/train_demo.py

1. Pairs: the 25 Nottingham folk tunes of tests/data/midi (melody and chords, all piano), rendered with the
   General MIDI soundfont pretty_midi ships (FluidSynth); 3 songs held out by name (--holdout 0.2).
2. Training: the `mini` size (d_model 256, 4 layers per network, 20 M parameters) from scratch, the original's
   objective and optimiser (Adafactor, constant lr 1e-3, dropout 0.1, condition dropout 0.1), batch 8, float32
   (the same on every CPU; bfloat16 would be faster where the CPU is fast at it), for
   --steps steps (2400 by default: about an hour on a 2-core CPU), validation every 100 steps.
3. Measure: the held-out songs' first segments (up to 3 each) rendered with the default sampler (UniPC, 20
   steps, guidance 2) by the trained and the untrained network, and their mean log-mel L1 distance to the
   ground truth (the soundfont render's own mel).

Everything is deterministic for a given torch build and CPU kind (the data, the initialisation, every example
and dropout mask). Run it again and it resumes the run where it stopped; --steps more than before trains on.
It writes into --work (build/demo), and copies the loss curves to docs/images/training-demo-loss.png and its
figures to bench/results/train_demo.json and bench/results/train_demo_metrics.csv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

HOLDOUT = 0.2  # by name: waltzes1, waltzes6 and xmas8 (spectrosynth.data.split_of)
SEGMENTS_PER_SONG = 3


def run(*args: str) -> None:
    print("+ spectrosynth " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "spectrosynth", *args], check=True)


def soundfont_dataset(midi: Path, data: Path, holdout: float) -> None:
    """`spectrosynth dataset` of MIDI files rendered by the built-in General MIDI soundfont (resumes)."""
    run("dataset", str(midi), str(data), "--soundfont", "builtin", "--holdout", str(holdout), "--save-audio",
        "--jobs", "2")  # fmt: skip


def mel_distances(data: Path, final: Path, seed: int = 0) -> dict[str, float]:
    """Mean |log-mel render - log-mel truth| over the held-out songs' first segments, for the trained model
    and the same network untrained."""
    import numpy as np
    import torch

    from spectrosynth.data import DatasetReader
    from spectrosynth.pipeline import Synthesizer
    from spectrosynth.sampling import DDPMSchedule
    from spectrosynth.tokens import NoteEvents, fit_segment
    from spectrosynth.training.model import load_networks, new_networks, size_configs

    trained, _ = load_networks(final)
    untrained = new_networks(size_configs("mini"), seed)
    reader = DatasetReader(data)
    out = {}
    for name, nets in (("trained", trained), ("untrained", untrained)):
        for net in nets.values():
            net.eval().requires_grad_(False)
        synth = Synthesizer(
            nets["notes_encoder"],
            nets["continuous_encoder"],
            nets["decoder"],
            DDPMSchedule.published(),
            None,
            "cpu",
            torch.float32,
        )
        distances = []
        for ref in reader.split("validation"):
            song = reader.load(ref)
            events = NoteEvents(song.notes, song.duration)
            count = min(SEGMENTS_PER_SONG, events.num_segments)
            tokens = [fit_segment(j, events.segment(j)).tokens for j in range(count)]
            mel = synth.generate_mel(tokens, seed=seed)
            truth = np.full_like(mel, song.mel.min())
            part = song.mel[: len(mel)]
            truth[: len(part)] = part
            distances.append(float(np.abs(mel - truth).mean()))
        out[name] = float(np.mean(distances))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/demo")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--no-copy", action="store_true", help="leave docs/ and bench/results/ alone")
    args = parser.parse_args()
    data, out = args.work / "data", args.work / "run"
    began = time.monotonic()
    soundfont_dataset(ROOT / "tests/data/midi/nottingham", data, HOLDOUT)
    dataset_seconds = time.monotonic() - began
    common = ["--max-steps", str(args.steps), "--val-every", "100", "--checkpoint-every", "100"]
    if (out / "run.json").exists():
        run("train", str(data), str(out), "--resume", *common)
    else:
        run(
            "train",
            str(data),
            str(out),
            "--config",
            "mini",
            "--batch-size",
            "8",
            "--val-examples",
            "32",
            "--log-every",
            "10",
            "--seed",
            "0",
            "--precision",
            "float32",
            *common,
        )
    train_seconds = time.monotonic() - began - dataset_seconds
    from spectrosynth.training.logs import read_metrics

    rows = read_metrics(out / "metrics.csv")
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_loss" in r]
    distances = mel_distances(data, out / "final")
    summary = {
        "cpu": cpu_flags(),
        "steps": int(steps[-1]["step"]),
        "training_hours": steps[-1]["wall_seconds"] / 3600,
        "examples_per_second": steps[-1]["examples"] / steps[-1]["wall_seconds"],  # over the whole run
        "train_loss_first": steps[0]["loss"],
        "train_loss_last": sum(r["loss"] for r in steps[-10:]) / len(steps[-10:]),
        "val_loss_first": vals[0]["val_loss"],
        "val_loss_last": vals[-1]["val_loss"],
        "val_loss_best": min(r["val_loss"] for r in vals),
        "mel_l1_trained": distances["trained"],
        "mel_l1_untrained": distances["untrained"],
        "dataset_seconds": dataset_seconds,
        "this_run_seconds": train_seconds,
    }
    print(json.dumps(summary, indent=2))
    if not args.no_copy:
        (ROOT / "docs/images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "loss.png", ROOT / "docs/images/training-demo-loss.png")
        (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "metrics.csv", ROOT / "bench/results/train_demo_metrics.csv")
        (ROOT / "bench/results/train_demo.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
