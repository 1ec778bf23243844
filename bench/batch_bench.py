"""Batch rendering throughput: plain against Ray with 2 workers, and continuous against fixed batching.

On the random base checkpoint (the published shapes), a mix of real songs of different lengths from
tests/data/midi, rendered with the default sampler at few steps so that the run stays short (the ratios do
not depend on the step count: every song costs the same per segment):

1. `spectrosynth batch` plain, and `--ray local --workers 2`, each in a fresh process, from start to the
   last file written: files per hour and hours of audio per hour (from the batch's own manifest);
2. continuous batching (`render_jobs`, a finished song's slot refilled at once) against fixed groups that
   wait for their longest song (`Synthesizer.iter_mel_batch` per group), at batch size 4: passes through the
   model, how full they were (padding waste: empty slots), and wall time.

    .venv/bin/python bench/batch_bench.py --checkpoint /tmp/spectrosynth-base-random      # about 15 minutes

Needs Ray for part 1 (`pip install "spectrosynth[ray]"`, installed by `make install`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SONGS = [  # real songs of 3 to 20 segments (15 s to 1:42), in no particular order, 76 segments in all
    "nottingham/xmas7.mid", "nottingham/waltzes1.mid", "nottingham/xmas1.mid", "note-seq/english1.mid",
    "nottingham/waltzes4.mid", "nottingham/waltzes6.mid", "nottingham/xmas9.mid", "nottingham/waltzes2.mid",
]  # fmt: skip


def collection(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in SONGS:
        source = ROOT / "tests" / "data" / "midi" / name
        if source.exists():
            target = folder / source.name
            shutil.copy(source, target)
            files.append(target)
    return files


def run_cli(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spectrosynth.cli", *args], check=True)
    return time.perf_counter() - began


def throughput(checkpoint: Path, steps: int, tmp: Path) -> list[dict]:
    from spectrosynth.batch import read_status

    songs = tmp / "songs"
    collection(songs)
    common = ["--model", str(checkpoint), "--device", "cpu", "--steps", str(steps), "--quiet"]
    results = []
    for name, extra in [("plain", []), ("ray local, 2 workers", ["--ray", "local", "--workers", "2"])]:
        out = tmp / name.split()[0]
        wall = run_cli(["batch", str(songs), str(out), *common, *extra])
        status = read_status(out)
        row = {
            "mode": name,
            "files": status.ok,
            "audio_s": status.audio_seconds,
            "wall_s": wall,
            "files_per_hour": status.ok / wall * 3600,
            "audio_hours_per_hour": status.audio_seconds / wall,
        }
        results.append(row)  # fmt: skip
        print(f"  {name:22} {status.ok} files, {status.audio_seconds / 60:.1f} min of audio in {wall:.1f} s: "
              f"{row['files_per_hour']:.0f} files/h, {row['audio_hours_per_hour']:.2f} audio h/h",
              flush=True)  # fmt: skip
    return results


def batching(checkpoint: Path, steps: int, size: int, tmp: Path) -> dict:
    """The same jobs, the same code (render_jobs): one queue of all of them (continuous), or one queue per
    group of `size` in file order, each draining until its longest song ends (fixed)."""
    from spectrosynth import Synthesizer
    from spectrosynth.batch.jobs import Job, RenderSettings
    from spectrosynth.batch.render import BatchStats, render_jobs

    synth = Synthesizer.from_pretrained(checkpoint, device="cpu", dtype="auto")
    songs = collection(tmp / "mix")
    settings = RenderSettings(str(checkpoint), None, "auto", "unipc", steps, 2.0, 0)
    report: dict = {"batch_size": size}
    for mode in ("fixed", "continuous"):
        jobs = [Job(p.name, p, tmp / mode / f"{p.stem}.wav") for p in songs]
        groups = [jobs[i : i + size] for i in range(0, len(jobs), size)] if mode == "fixed" else [jobs]
        stats = BatchStats()
        began = time.perf_counter()
        for group in groups:
            for result in render_jobs(group, synth, settings, batch_size=size, stats=stats):
                assert result.ok, result.error
                report.setdefault("segments", {})[result.job.rel] = result.segments
        wall = time.perf_counter() - began
        report[mode] = {"passes": stats.passes, "rows": stats.rows, "occupancy": stats.rows / stats.slots,
                        "wall_s": wall}  # fmt: skip
        used = stats.rows / stats.slots
        print(f"  {mode:10} {stats.passes:3} passes of {size}, {used:.0%} of the slots used "
              f"({1 - used:.0%} padding waste), {wall:.1f} s", flush=True)  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/spectrosynth-base-random"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from spectrosynth.testing import write_checkpoint

    if not (args.checkpoint / "model_index.json").exists():
        write_checkpoint(args.checkpoint, "base", seed=0)
    sys.path.insert(0, str(Path(__file__).parent))
    from sampler_speed import machine

    print(f"machine: {machine()}; {args.steps} steps, guidance 2\n", flush=True)
    report = {"machine": machine(), "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ray:
            print("1. plain against Ray:")
            report["throughput"] = throughput(args.checkpoint, args.steps, Path(tmp) / "throughput")
        print(f"2. continuous against fixed batching, batch size {args.batch_size}:")
        report["batching"] = batching(args.checkpoint, args.steps, args.batch_size, Path(tmp) / "batching")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
