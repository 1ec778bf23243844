"""Memory of a long render: does it stay flat as the song goes on?

Generates a long multi-track song (8 tracks with drums and sustain pedal, as in tokenize_bench.py), renders
it with `spectrosynth render` in a child process, and samples the child's resident memory (VmRSS) four
times a second. Prints the peak, the memory after each tenth of the render, and the growth between the
first and the last tenth. Streaming vocoding and progressive writing keep memory flat: only the output file
grows.

    .venv/bin/python bench/memory_bench.py --minutes 10 --model /tmp/spectrosynth-base-random --dtype float32
    .venv/bin/python bench/memory_bench.py --minutes 60                 # a tiny random model, quick

Steps do not change the memory used, so --steps defaults to 1 to keep the run short.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from tokenize_bench import long_song  # noqa: E402


def rss_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", help="model folder (default: write a tiny random one)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from spectrosynth.testing import write_checkpoint

            model = str(write_checkpoint(tmp / "tiny", "tiny"))
        midi = tmp / "long.mid"
        long_song(args.minutes * 60).save(midi)
        out = tmp / "long.flac"
        cmd = [
            sys.executable, "-m", "spectrosynth.cli", "render", str(midi), str(out), "--model", model,
            "--device", "cpu", "--dtype", args.dtype, "--steps", str(args.steps), "--quiet",
        ]  # fmt: skip
        began = time.monotonic()
        child = subprocess.Popen(cmd)
        samples: list[tuple[float, float]] = []
        while child.poll() is None:
            rss = rss_gb(child.pid)
            if rss is not None:
                samples.append((time.monotonic() - began, rss))
            time.sleep(0.25)
        if child.returncode != 0:
            sys.exit(f"render failed with exit code {child.returncode}")
        wall = time.monotonic() - began
        size = out.stat().st_size / 1e6

    print(
        f"song: {args.minutes:g} min, model {model}, {args.dtype}, {args.steps} steps; "
        f"render took {wall:.0f} s"
    )
    print(f"output file: {size:.1f} MB (FLAC)")
    print(f"peak resident memory: {max(r for _, r in samples):.2f} GB")
    tenths = []
    for i in range(1, 11):
        at = [r for t, r in samples if t <= wall * i / 10]
        tenths.append(at[-1] if at else float("nan"))
    print("memory after each tenth of the render (GB): " + " ".join(f"{r:.2f}" for r in tenths))
    # The last reading may come after the model is released at the end: compare with the largest later one.
    growth = (max(tenths[1:]) - tenths[0]) * 1000
    print(f"growth from the first tenth to the largest later reading: {growth:+.0f} MB")


if __name__ == "__main__":
    main()
