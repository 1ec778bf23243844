"""What stems and a stereo mix cost (docs/performance.md#stems-and-stereo), side by side in one run.

    .venv/bin/python bench/stems_bench.py --checkpoint /tmp/spectrosynth-base-random

Each run is `spectrosynth render` in its own process (import, model load, sampling, vocoder, writing),
timed from start to exit, with the random checkpoint in the published base sizes on --seconds of
two real files: english3.mid (3 tracks, from 0:00) and example_complex.mid (18 tracks, from 3:40, where 14
play). For each: the plain mono render, `--channels 2` (one batch row per playing track), `--stems` (those
tracks and the whole song), and what a user would do without --stems: one `--mute` render per playing
track, one after the other.
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

SONGS = {"english3.mid": (3, 0.0), "example_complex.mid": (18, 220.0)}  # name: (tracks, --start)


def render(checkpoint: Path, song: Path, options: list[str], seconds: float, out: Path, env,
           start: float = 0.0) -> float:  # fmt: skip
    command = [sys.executable, "-m", "spectrosynth", "render", str(song), str(out), "--model",
               str(checkpoint), "--device", "cpu", "--start", f"{start:g}", "--duration", f"{seconds:g}",
               "--force", "-q", "--no-cache", *options]  # fmt: skip
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
        for name, (tracks, start) in SONGS.items():
            song = ROOT / "tests/data/midi/note-seq" / name
            runs = [("mono mix (plain render)", []), ("--channels 2", ["--channels", "2"]),
                    ("--stems", ["--stems", str(tmp / "stems")])]  # fmt: skip
            for label, options in runs:
                wall = render(args.checkpoint, song, [*dtype, *options], args.seconds, tmp / "out.wav", env,
                              start)  # fmt: skip
                rows.append({"song": name, "tracks": tracks, "start": start, "run": label,
                             "rows": len(_parts(song, options, start, args.seconds).parts),
                             "wall_s": round(wall, 2)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            playing = [p.track for p in _parts(song, ["--channels", "2"], start, args.seconds).tracks]
            total = 0.0
            for track in playing:  # what a user would do without --stems
                mute = ",".join(str(t) for t in range(1, tracks + 1) if t != track)
                total += render(args.checkpoint, song, [*dtype, "--mute", mute], args.seconds,
                                tmp / f"alone{track}.wav", env, start)  # fmt: skip
            rows.append({"song": name, "tracks": tracks, "start": start,
                         "run": f"one --mute render per playing track ({len(playing)})", "rows": 1,
                         "wall_s": round(total, 2)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    flags = cpu_flags()
    result = {"machine": flags, "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "seconds": args.seconds, "dtype": args.dtype, "runs": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _parts(song: Path, options: list[str], start: float, seconds: float):
    """The parts `render` makes with these options (a track silent in the window gets none)."""
    from spectrosynth.midi import read_midi
    from spectrosynth.outputs import OutputSettings
    from spectrosynth.remap import Remap
    from spectrosynth.stems import plan_parts

    stems, channels = "--stems" in options, 2 if "--channels" in options else 1
    output = OutputSettings(channels=channels)
    return plan_parts(read_midi(song), Remap(), start, seconds, output, stems=stems)


if __name__ == "__main__":
    main()
