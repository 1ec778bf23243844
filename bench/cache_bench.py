"""What the segment cache saves (docs/performance.md#re-rendering-after-an-edit): a render again after an edit
in the last tenth of a 3-minute song, against the full render.

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python bench/cache_bench.py \
        --checkpoint /tmp/spectrosynth-base-random-soundstream

Each run is `spectrosynth render` in its own process (import, model load, sampling, vocoder, writing), timed
from start to exit, on english3.mid (184 s, 3 tracks, 36 segments) with the random checkpoint in the
published base sizes and the SoundStream-sized random vocoder (as bench/end_to_end.py), the default sampler
(unipc, 20 steps, guidance 2), in --dtype bfloat16 (what `auto` picks on machine C). The segment cache
starts empty (a temporary SPECTROSYNTH_CACHE; the converted weights are made first, so no run pays for the
conversion):

1. the full render, which fills the cache;
2. the same file again, unchanged: every segment from the cache (start-up, vocoder, writing);
3. after an edit in the last tenth (one note of track 2 at 90 % of the song or later, two semitones up):
   only the segments from the edited one on are sampled;
4. (with --check) the edited file with --no-cache, and whether 3 wrote the same bytes.

The threads are torch's default, so run it pinned (taskset) with OMP_NUM_THREADS as wanted; the result
records both. Results in bench/results/cache_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

SONG = ROOT / "tests/data/midi/note-seq/english3.mid"
CACHED = re.compile(r"(\d+) of (\d+) segments(?: \((\d+) parts\))? from the cache")


def edit_last_tenth(source: Path, target: Path) -> dict:
    """Copy the file with one note of its second instrument track, struck at 90 % of the song's ticks or
    later, two semitones up (its note-off too); returns what was changed."""
    import mido

    midi = mido.MidiFile(source)
    end = max(sum(m.time for m in track) for track in midi.tracks)
    noted = [i for i, track in enumerate(midi.tracks) if any(m.type == "note_on" for m in track)]
    index = noted[1] if len(noted) > 1 else noted[0]
    track, tick, chosen, pitch, at = midi.tracks[index], 0, None, 0, 0
    for position, message in enumerate(track):
        tick += message.time
        if message.type not in ("note_on", "note_off"):
            continue
        struck = message.type == "note_on" and message.velocity > 0
        if chosen is None and struck and tick >= 0.9 * end:
            chosen, pitch, at = position, message.note, tick
            track[position] = message.copy(note=pitch + 2)
        elif chosen is not None and not struck and message.note == pitch:  # its note-off
            track[position] = message.copy(note=pitch + 2)
            break
    if chosen is None:
        raise SystemExit(f"{source}: no note in the last tenth of track {index}")
    midi.save(target)
    return {"mtrk": index, "tick": at, "of_ticks": end, "pitch": f"{pitch} -> {pitch + 2}"}


def render(checkpoint: Path, song: Path, out: Path, env: dict, options: list[str]) -> dict:
    command = [sys.executable, "-m", "spectrosynth", "render", str(song), str(out), "--model",
               str(checkpoint), "--device", "cpu", "--force", *options]  # fmt: skip
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
    found = CACHED.search(result.stderr)
    wrote = next((line for line in result.stderr.splitlines() if "wrote" in line), "")
    return {"wall_s": round(wall, 2), "from_cache": found.group(0) if found else "0 segments from the cache",
            "reused": int(found.group(1)) if found else 0, "wrote": wrote.strip()}  # fmt: skip


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    default = Path(tempfile.gettempdir()) / "spectrosynth-base-random-soundstream"
    parser.add_argument("--checkpoint", type=Path, default=default)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=None, help="default: the sampler's (unipc: 20)")
    parser.add_argument("--options", default="", help="more render options, e.g. '--channels 2'")
    parser.add_argument("--check", action="store_true", help="also render the edit with --no-cache, compare")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cache_bench.json")
    args = parser.parse_args()
    if not (args.checkpoint / "model_index.json").exists():
        from spectrosynth.testing import write_checkpoint

        write_checkpoint(args.checkpoint, "base", weights_format="safetensors", vocoder="soundstream")
    import torch

    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import prepare

    options = ["--dtype", args.dtype, *(["--steps", str(args.steps)] if args.steps else []),
               *args.options.split()]  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "SPECTROSYNTH_CACHE": str(tmp / "cache")}
        warm = render(args.checkpoint, SONG, tmp / "warm.wav", env,
                      ["--dtype", args.dtype, "--steps", "1", "--duration", "1", "--no-cache"])  # fmt: skip
        print(f"converted weights made: {warm['wall_s']} s", flush=True)
        edited = tmp / "edited.mid"
        edit = edit_last_tenth(SONG, edited)
        before = [s.tokens for s in prepare(read_midi(SONG)).segments]
        after = [s.tokens for s in prepare(read_midi(edited)).segments]
        changed = [k + 1 for k in range(len(after)) if k >= len(before) or before[k] != after[k]]
        runs = [("full render, empty segment cache", SONG, "full.wav", []),
                ("the same file again, unchanged", SONG, "same.wav", []),
                ("after an edit in the last tenth", edited, "edit.wav", [])]  # fmt: skip
        if args.check:
            runs.append(("the edited file, --no-cache", edited, "edit-fresh.wav", ["--no-cache"]))
        for label, song, name, extra in runs:
            r = render(args.checkpoint, song, tmp / name, env, [*options, *extra])
            r["run"] = label
            results.append(r)
            print(f"{label:40s} {r['wall_s']:8.1f} s  {r['from_cache']}", flush=True)
        same_bytes = None
        if args.check:
            same_bytes = (tmp / "edit.wav").read_bytes() == (tmp / "edit-fresh.wav").read_bytes()
            print(f"re-render equals --no-cache render: {same_bytes}", flush=True)
        entries = sum(1 for _ in (tmp / "cache" / "segments").rglob("*.seg"))
        size = sum(p.stat().st_size for p in (tmp / "cache" / "segments").rglob("*.seg"))
    full, edit_run = results[0]["wall_s"], results[2]["wall_s"]
    summary = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "song": SONG.name,
        "segments": len(before),
        "edit": edit,
        "segments_changed": changed,
        "checkpoint": "random, published base sizes, SoundStream-sized random vocoder",
        "options": options,
        "results": results,
        "re_render_vs_full": round(edit_run / full, 3),
        "same_bytes_as_no_cache": same_bytes,
        "cache_entries": entries,
        "cache_bytes": size,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }
    print(f"re-render after the edit: {edit_run:.1f} s, the full render {full:.1f} s ({edit_run / full:.1%})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
