"""What stems and a stereo mix cost (docs/performance.md#stems-and-stereo), side by side in one run.

    .venv/bin/python bench/stems_bench.py --checkpoint /tmp/spectrosynth-base-random

Each run is `spectrosynth render` in its own process (import, model load, sampling, vocoder, writing),
timed from start to exit, with the random checkpoint in the published base sizes on the first --seconds of
two real files: english3.mid (3 tracks) and example_complex.mid (18 tracks). For each: the plain mono
render, `--channels 2` (one batch row per track), `--stems` (the tracks and the whole song), and, for the
3-track file, what a user would do without --stems: one `--mute` render per track, one after the other.
The converted-weights cache is warmed first so that no run pays for the conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

SONGS = {"english3.mid": 3, "example_complex.mid": 18}  # name: tracks


def render(checkpoint: Path, song: Path, options: list[str], seconds: float, out: Path, env) -> float:
    command = [sys.executable, "-m", "spectrosynth", "render", str(song), str(out), "--model",
               str(checkpoint), "--device", "cpu", "--duration", f"{seconds:g}", "--force", "-q",
               *options]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - began


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/spectrosynth-base-random"))
    parser.add_argument("--seconds", type=float, default=10.0, help="of each song: 2 segments by default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/stems_bench.json")
    args = parser.parse_args()
    if not (args.checkpoint / "model_index.json").exists():
        from spectrosynth.testing import write_checkpoint

        write_checkpoint(args.checkpoint, "base", seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "SPECTROSYNTH_CACHE": str(tmp / "cache")}
        dtype = ["--dtype", args.dtype]
        first = ROOT / "tests/data/midi/note-seq/english3.mid"
        render(args.checkpoint, first, [*dtype, "--steps", "1"], 0.5, tmp / "warm.wav", env)  # the cache
        for name, tracks in SONGS.items():
            song = ROOT / "tests/data/midi/note-seq" / name
            runs = [("mono mix (plain render)", []), ("--channels 2", ["--channels", "2"]),
                    ("--stems", ["--stems", str(tmp / "stems")])]  # fmt: skip
            for label, options in runs:
                wall = render(args.checkpoint, song, [*dtype, *options], args.seconds, tmp / "out.wav", env)
                rows.append({"song": name, "tracks": tracks, "run": label, "rows": _rows(label, tracks),
                             "wall_s": round(wall, 2)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            if tracks <= 3:
                total = 0.0
                for track in range(1, tracks + 1):
                    mute = ",".join(str(t) for t in range(1, tracks + 1) if t != track)
                    total += render(args.checkpoint, song, [*dtype, "--mute", mute], args.seconds,
                                    tmp / f"alone{track}.wav", env)  # fmt: skip
                rows.append({"song": name, "tracks": tracks, "run": "one --mute render per track",
                             "rows": 1, "wall_s": round(total, 2)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    flags = cpu_flags()
    result = {"machine": flags, "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "seconds": args.seconds, "dtype": args.dtype, "runs": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _rows(label: str, tracks: int) -> int:
    return {"--channels 2": tracks, "--stems": tracks + 1}.get(label, 1)


if __name__ == "__main__":
    main()
