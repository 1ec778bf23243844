"""The measuring model: a small network trained here from scratch, so that quality can be measured.

    .venv/bin/python bench/measuring_model.py --steps 14000 --keep 11750   # train (resumes)
    .venv/bin/python bench/measuring_model.py --cooldown-from 11750 --steps 14000   # the cool-down branch
    .venv/bin/python bench/measuring_model.py --figures                # the loss plot and metrics only

Every quality decision (sampler, steps, guidance, precision) needs a network that renders music, and the
published weights cannot be downloaded here (docs/quality.md):

1. Pairs: the 65 Nottingham folk tunes of bench/data/nottingham (melody and chords, all piano), rendered with
   the General MIDI soundfont pretty_midi ships (FluidSynth); 10 held out by name (--holdout 0.2).
2. Training: the `mini` size (d_model 256, 4 layers per network, 20 M parameters) from scratch with the
   original's objective and optimiser (Adafactor, constant lr 1e-3, dropout 0.1, condition dropout 0.1),
   batch 8, bfloat16 autocast, the weight average (EMA, spectrosynth's default), validation and a
   checkpoint every 250 steps, every doubling of the step count kept (250, 500, 1000, ...) for the trend
   (bench/trend_driver.sh sweeps each). One thread: run it as `OMP_NUM_THREADS=1 taskset -c 0 ...` beside
   other work. Ctrl-C checkpoints; run it again and it resumes.
3. The cool-down: `--cooldown-from S0 --steps S` copies the main run's checkpoint S0 into
   build/measure/cooldown-S and trains it on to S with the learning rate decaying to 0 from S0 (`--lr-schedule
   wsd`, the switch a constant run can make on resume), so that it can be compared with the main run's own
   checkpoint S (no cool-down) at the same step count.

It writes into --work (build/measure) and copies the loss curves to docs/images/measuring-model-loss.png and
the metrics to bench/results/measuring_model_metrics.csv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

EVERY = 250


def run(*args: str) -> None:
    print("+ spectrosynth " + " ".join(args), flush=True)
    code = subprocess.run([sys.executable, "-m", "spectrosynth", *args]).returncode
    if code == 130:  # Ctrl-C: the run checkpointed; running this again resumes it
        sys.exit("measuring_model.py: stopped; the run checkpointed, and running this again resumes it")
    if code:
        sys.exit(f"measuring_model.py: spectrosynth {args[0]} failed (exit {code})")


def dataset(data: Path) -> None:
    """The soundfont renders of the 65 tunes (resumes: songs already there are kept)."""
    midi = str(ROOT / "bench/data/nottingham")
    run("dataset", midi, str(data), "--soundfont", "builtin", "--holdout", "0.2", "--save-audio", "--jobs=2")


def keep(out: Path, folder: Path, steps: list[int]) -> threading.Thread:
    """A thread copying the main run's checkpoints at `steps` into `folder` as they appear (the run keeps
    only its last three and the doublings): the cool-down branch starts from one of them."""

    def watch() -> None:
        for step in steps:
            name = f"step-{step:08d}"
            while not (out / "checkpoints" / name / "state.json").is_file() and not (folder / name).is_dir():
                time.sleep(10)
            if not (folder / name).is_dir():
                shutil.copytree(out / "checkpoints" / name, folder / f".{name}.tmp")
                (folder / f".{name}.tmp").rename(folder / name)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def train(data: Path, out: Path, steps: int) -> None:
    common = ["--max-steps", str(steps)]
    if (out / "run.json").exists():
        run("train", str(data), str(out), "--resume", *common)
        return
    run("train", str(data), str(out), "--config", "mini", "--optimizer", "adafactor", "--lr", "1e-3",
        "--batch-size", "8", "--val-examples", "64", "--val-every", str(EVERY), "--checkpoint-every",
        str(EVERY), "--keep-doublings", "--log-every", "10", "--seed", "1", "--precision", "bfloat16",
        *common)  # fmt: skip


def cooldown(data: Path, main: Path, branch: Path, start: int, steps: int) -> None:
    """The main run's checkpoint `start`, trained on to `steps` with a 1-sqrt decay of the learning rate over
    those last steps, in `branch`."""
    if not (branch / "run.json").exists():
        source = main / "checkpoints" / f"step-{start:08d}"
        if not source.is_dir():
            source = main.parent / "keep" / source.name  # copied there by --keep
        if not source.is_dir():
            sys.exit(f"checkpoint {start} is not kept: train the main run with --keep {start} to keep it")
        (branch / "checkpoints").mkdir(parents=True)
        shutil.copytree(source, branch / "checkpoints" / source.name)
        shutil.copyfile(main / "run.json", branch / "run.json")
        shutil.copyfile(main / "metrics.csv", branch / "metrics.csv")  # cut back to `start` on resume
    run("train", str(data), str(branch), "--resume", "--max-steps", str(steps), "--lr-schedule", "wsd",
        "--cooldown", str(steps - start), "--keep-doublings")  # fmt: skip


def figures(out: Path) -> None:
    """The main run's loss plot and metrics, and a summary, into docs/ and bench/results/."""
    from spectrosynth.training.logs import plot_losses, read_metrics

    rows = read_metrics(out / "metrics.csv")
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_loss" in r]
    summary = {
        "cpu": cpu_flags(),
        "steps": int(steps[-1]["step"]),
        "training_hours": steps[-1]["wall_seconds"] / 3600,
        "examples_per_second": steps[-1]["examples"] / steps[-1]["wall_seconds"],
        "val_loss_first": vals[0]["val_loss"],
        "val_loss_last": vals[-1]["val_loss"],
        "val_loss_raw_last": vals[-1].get("val_loss_raw"),
        "val_loss_best": min(r["val_loss"] for r in vals),
    }
    title = "measuring model: mini from scratch on 55 Nottingham tunes (bfloat16, one core)"
    plot_losses(out / "metrics.csv", ROOT / "docs/images/measuring-model-loss.png", title)
    shutil.copyfile(out / "metrics.csv", ROOT / "bench/results/measuring_model_metrics.csv")
    branches = sorted(out.parent.glob("cooldown-*"), key=lambda p: int(p.name.split("-")[1]))
    if branches:
        branch = branches[-1]
        branch_rows = read_metrics(branch / "metrics.csv")
        cut = [r for r in branch_rows if "val_loss" in r]
        summary["cooldown"] = {
            "from_step": cooldown_start(branch_rows),
            "steps": int(cut[-1]["step"]),
            "val_loss": cut[-1]["val_loss"],
            "val_loss_raw": cut[-1].get("val_loss_raw"),
        }
        shutil.copyfile(branch / "metrics.csv", ROOT / "bench/results/measuring_model_cooldown_metrics.csv")
        plot_cooldown(rows, branch_rows, ROOT / "docs/images/measuring-model-cooldown.png")
    print(json.dumps(summary, indent=2))
    (ROOT / "bench/results/measuring_model.json").write_text(json.dumps(summary, indent=2) + "\n")


def cooldown_start(rows: list[dict]) -> int:
    """The last step logged at the constant rate: where the branch's decay began."""
    peak = max(r["lr"] for r in rows if "lr" in r)
    return int(max(r["step"] for r in rows if r.get("lr", 0) >= peak * (1 - 1e-6)))


def plot_cooldown(main_rows: list[dict], branch_rows: list[dict], png: Path) -> None:
    """Validation loss over the cool-down's stretch: the main run (constant rate) against its cool-down
    branch, each with its weight average (EMA) and its raw weights; and the learning rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = cooldown_start(branch_rows) - 4 * EVERY
    end = max(int(r["step"]) for r in branch_rows)

    def series(rows, key):
        return zip(
            *[(r["step"], r[key]) for r in rows if key in r and start <= r["step"] <= end], strict=True
        )

    fig, (ax, lr) = plt.subplots(2, 1, figsize=(7, 5), dpi=120, sharex=True, height_ratios=(3, 1))
    for rows, name, colour in ((main_rows, "constant rate", "C0"), (branch_rows, "cool-down", "C3")):
        ax.plot(*series(rows, "val_loss"), "o-", color=colour, ms=3, label=f"{name}: EMA weights")
        ax.plot(
            *series(rows, "val_loss_raw"), "s--", color=colour, ms=2, lw=0.8, label=f"{name}: raw weights"
        )
        lr.plot(*series(rows, "lr"), color=colour, lw=1.2, label=name)
    ax.set_ylabel("validation loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("measuring model: the last steps with and without a cool-down (validation every 250 steps)",
                 fontsize=9)  # fmt: skip
    lr.set_ylabel("learning rate")
    lr.set_xlabel("step")
    lr.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/measure")
    parser.add_argument("--steps", type=int, default=14000)
    parser.add_argument("--cooldown-from", type=int, metavar="S0", help="the cool-down branch from step S0")
    parser.add_argument("--figures", action="store_true", help="the loss plot and metrics only")
    parser.add_argument(
        "--keep",
        type=int,
        nargs="*",
        default=[],
        metavar="STEP",
        help="while training, copy these checkpoints to WORK/keep (a cool-down's start)",
    )
    args = parser.parse_args()
    data, out = args.work / "data", args.work / "run"
    if args.figures:
        figures(out)
        return
    dataset(data)
    if args.cooldown_from is not None:
        cooldown(data, out, args.work / f"cooldown-{args.steps}", args.cooldown_from, args.steps)
        return
    keeper = keep(out, args.work / "keep", args.keep) if args.keep else None
    train(data, out, args.steps)
    if keeper is not None:
        keeper.join(timeout=120)
    figures(out)


if __name__ == "__main__":
    main()
