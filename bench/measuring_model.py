"""The measuring model: the training demonstration's network trained on, so that quality can be measured.

    .venv/bin/python bench/measuring_model.py --steps 20000     # resumes; more steps than before trains on

Every quality decision (sampler, steps, guidance, precision) needs a network that renders music, and the
published weights cannot be downloaded here. This trains one on this machine (docs/quality.md):

1. Pairs: the 65 Nottingham folk tunes of bench/data/nottingham (melody and chords, all piano; the 25 of the
   demonstration among them), rendered with the General MIDI soundfont pretty_midi ships (FluidSynth); 20 %
   of the songs held out by name (--holdout 0.2: the demonstration's 3 held-out songs among them, so no song
   the network has seen is ever validated on).
2. Training: starts from the demonstration's network (`make demo`: the `mini` size, 2400 steps), then the
   original's objective and optimiser (Adafactor, constant lr 1e-3, dropout 0.1, condition dropout 0.1),
   batch 8, bfloat16 autocast (1.7x float32 without AMX on an AVX512-BF16 CPU, train_bench.json),
   validation every 250 steps. Ctrl-C checkpoints; run it again and it resumes.
3. Measure: the latest checkpoint exported to WORK/latest (published layout, no vocoder), and the mean
   log-mel L1 of its renders of the held-out songs (UniPC 20, guidance 2; the first 3 segments of each)
   against the ground truth, appended to bench/results/measuring_model_mel.csv. `--measure-only` does this
   alone, mid-run. bench/quality_sweep.py then renders the held-out songs with WORK/latest and scores them.

It writes into --work (build/measure) and copies the loss curves to docs/images/measuring-model-loss.png and
the metrics to bench/results/measuring_model_metrics.csv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402
from train_demo import run, soundfont_dataset  # noqa: E402

DEMO_FINAL = ROOT / "build/demo/run/final"


def export(run_dir: Path, init: Path, out: Path) -> tuple[Path, int]:
    """The run's latest checkpoint as a model folder in the published layout (no vocoder): what
    `spectrosynth train` writes as final/ at the end, available mid-run. Returns (folder, step)."""
    import json as _json

    from safetensors.torch import load_file

    from spectrosynth.training import checkpoint as ckpt
    from spectrosynth.training.model import load_networks, save_published

    latest = ckpt.latest(run_dir)
    if latest is None:
        sys.exit(f"{run_dir} has no checkpoint yet")
    nets, configs = load_networks(init)
    prefixes = {
        "notes_encoder": "notes_encoder",
        "context_encoder": "continuous_encoder",
        "decoder": "decoder",
    }
    tensors = load_file(latest.path / "weights.safetensors")
    for key, tensor in tensors.items():
        prefix, _, name = key.partition(".")
        nets[prefixes[prefix]].get_parameter(name).data.copy_(tensor)
    step = _json.loads((latest.path / "state.json").read_text())["step"]
    return save_published(out, nets, configs, None), step


def mel_distance(model: Path, data: Path, segments: int = 3) -> float:
    """Mean log-mel L1 of the default sampler's renders (UniPC 20, guidance 2, float32) of the held-out
    songs' first segments against their ground truth: the bar is 2 (docs/quality.md)."""
    from quality_sweep import Setting, load_songs, render

    from spectrosynth.evaluation import mel_l1

    songs = load_songs(data, segments)
    mels, *_ = render(model, songs, Setting("default", "unipc", 20, 2.0))
    return float(sum(mel_l1(m, s["truth"]) for m, s in zip(mels, songs, strict=True)) / len(songs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/measure")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--init", type=Path, default=DEMO_FINAL, help="the network to start from")
    parser.add_argument("--no-copy", action="store_true", help="leave docs/ and bench/results/ alone")
    parser.add_argument(
        "--measure-only", action="store_true", help="export the latest checkpoint and measure it; no training"
    )
    args = parser.parse_args()
    data, out = args.work / "data", args.work / "run"
    if not args.measure_only:
        train(args, data, out)
    measure(args, data, out)


def train(args: argparse.Namespace, data: Path, out: Path) -> None:
    if not (out / "run.json").exists() and not (args.init / "model_index.json").exists():
        sys.exit(f"{args.init} is missing: run `make demo` first (about an hour), or give --init")
    soundfont_dataset(ROOT / "bench/data/nottingham", data, 0.2)
    common = ["--max-steps", str(args.steps), "--val-every", "250", "--checkpoint-every", "250"]
    if (out / "run.json").exists():
        run("train", str(data), str(out), "--resume", *common)
    else:
        run(
            "train",
            str(data),
            str(out),
            "--init",
            str(args.init),
            "--mode",
            "full",
            "--optimizer",
            "adafactor",
            "--lr",
            "1e-3",
            "--batch-size",
            "8",
            "--val-examples",
            "64",
            "--log-every",
            "10",
            "--seed",
            "1",
            "--precision",
            "bfloat16",
            *common,
        )


def measure(args: argparse.Namespace, data: Path, out: Path) -> None:
    """Export the latest checkpoint to WORK/latest (what bench/quality_sweep.py renders with), measure its
    mel distance, and record the run's figures."""
    from spectrosynth.training.logs import plot_losses, read_metrics

    folder, step = export(out, args.init, args.work / "latest")
    distance = mel_distance(folder, data)
    print(json.dumps({"step": step, "mel_l1": distance}))
    rows = read_metrics(out / "metrics.csv")
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_loss" in r]
    summary = {
        "cpu": cpu_flags(),
        "steps_after_demo": int(steps[-1]["step"]),
        "training_hours": steps[-1]["wall_seconds"] / 3600,
        "examples_per_second": steps[-1]["examples"] / steps[-1]["wall_seconds"],
        "val_loss_first": vals[0]["val_loss"],
        "val_loss_last": vals[-1]["val_loss"],
        "val_loss_best": min(r["val_loss"] for r in vals),
        "mel_l1": distance,
        "mel_l1_segments_per_song": 3,
    }
    print(json.dumps(summary, indent=2))
    if not args.no_copy:
        log = ROOT / "bench/results/measuring_model_mel.csv"
        lines = log.read_text().splitlines() if log.exists() else ["step,mel_l1"]
        lines = [line for line in lines if not line.startswith(f"{step},")]  # measured again: the new figure
        log.write_text("\n".join([*lines, f"{step},{distance:.4f}"]) + "\n")
        title = "measuring model: after the demonstration's 2400 steps, on 55 tunes"
        plot_losses(out / "metrics.csv", ROOT / "docs/images/measuring-model-loss.png", title)
        shutil.copyfile(out / "metrics.csv", ROOT / "bench/results/measuring_model_metrics.csv")
        (ROOT / "bench/results/measuring_model.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
