"""End to end, from a fresh process to the written file: the default against the authors' recipe and
diffusers' default, side by side in one run (docs/performance.md).

    .venv/bin/python bench/end_to_end.py --checkpoint /tmp/spectrosynth-base-soundstream
    .venv/bin/python bench/end_to_end.py --size small     # the authors' small sizes (bench/small_vs_base.py)

Each run is `spectrosynth render` in its own process on the first --seconds (30) of a real multi-track MIDI
file (example_complex.mid: 18 tracks with drums) with the random checkpoint in the published base sizes and a
random vocoder of the published one's architecture and size (spectrosynth.testing's SoundStream decoder, 14.9
M parameters), timed from the process's start to its exit (import, model load, sampling, vocoder, writing):
what a user waits for. Every run passes --no-cache: the segment cache would otherwise hand a repeated render
its segments without sampling them. The default is also rendered with the tests' one-convolution vocoder (the
same weights otherwise): the difference is the vocoder's share. The converted-weights cache
(spectrosynth.converted) starts empty, so the first run in each precision shows the cold start and the second
the warm one. The authors' recipe (2000 decoder passes per segment) renders one segment only; its time for the
whole excerpt is that segment's sampling time times the number of segments plus the default run's other costs
(said so in the output).
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

SONG = ROOT / "tests/data/midi/note-seq/example_complex.mid"
SEGMENT_SECONDS = 5.12

RUNS = [
    # (label, options, repeat: run twice to show cold and warm start-up)
    ("default (--dtype auto)", [], True),
    ("default, the one-convolution vocoder (no vocoder cost)", ["--model-light-vocoder"], False),
    ("default, float32", ["--dtype", "float32"], False),
    ("default, int8", ["--dtype", "int8"], True),
    ("default, guidance interval -inf,0", ["--guidance-interval", "-inf,0"], False),
    ("unipc 10 (a draft)", ["--steps", "10"], False),
    (
        "diffusers' default: its sampler, 100 steps, unguided, float32",
        ["--sampler", "diffusers", "--steps", "100", "--guidance", "1", "--dtype", "float32"],
        False,
    ),  # fmt: skip
]
RECIPE = (
    "the authors' recipe: ddpm 1000, guidance 2 (one segment)",
    ["--sampler", "ddpm", "--steps", "1000"],
)


def render(checkpoint: Path, options: list[str], seconds: float, out: Path, cache: Path) -> dict:
    if "--model-light-vocoder" in options:  # the same weights beside the tests' one-convolution vocoder
        options = [o for o in options if o != "--model-light-vocoder"]
        checkpoint = light_vocoder_twin(checkpoint)
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(cache)}
    command = [sys.executable, "-m", "spectrosynth", "render", str(SONG), str(out),
               "--model", str(checkpoint), "--device", "cpu", "--duration", f"{seconds:g}", "--force",
               "--no-cache", *options]  # fmt: skip
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
    loading = next((line for line in result.stderr.splitlines() if "loading" in line), "")
    return {"wall_s": wall, "x_real_time": seconds / wall, "stderr_loading": loading.strip()}


def light_vocoder_twin(checkpoint: Path) -> Path:
    """A folder with the checkpoint's networks (linked) and the one-convolution vocoder."""
    from spectrosynth.testing import write_vocoder

    twin = checkpoint.with_name(checkpoint.name + "-light-vocoder")
    if not (twin / "model_index.json").exists():
        twin.mkdir(exist_ok=True)
        for item in checkpoint.iterdir():
            if item.name != "melgan" and not (twin / item.name).exists():
                (twin / item.name).symlink_to(item.resolve())
        write_vocoder(twin / "melgan" / "model.onnx")
    return twin


def ensure_checkpoint(checkpoint: Path, size: str) -> Path:
    """The random checkpoint of `size` with the SoundStream-decoder vocoder stand-in, written once."""
    if not (checkpoint / "model_index.json").exists():
        from spectrosynth.testing import write_checkpoint

        write_checkpoint(checkpoint, size, weights_format="safetensors", vocoder="soundstream")
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        choices=["tiny", "mini", "small", "base"],
        default="base",
        help="the random checkpoint's sizes (spectrosynth.presets.SIZES): base, the published model's; "
        "small, the authors' small_with_context",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: /tmp/spectrosynth-SIZE-soundstream"
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/end_to_end.json")
    args = parser.parse_args()
    if args.checkpoint is None:
        args.checkpoint = Path(tempfile.gettempdir()) / f"spectrosynth-{args.size}-soundstream"
    ensure_checkpoint(args.checkpoint, args.size)
    import torch

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, wav = Path(tmp) / "cache", Path(tmp) / "out.wav"
        for label, options, repeat in RUNS:
            for attempt in ("cold", "warm") if repeat else ("",):
                r = render(args.checkpoint, options, args.seconds, wav, cache)
                r.update(label=label + (f", {attempt} start" if attempt else ""), options=options)
                results.append(r)
                print(f"{r['label']:70s} {r['wall_s']:7.1f} s  {r['x_real_time']:.2f}x real time", flush=True)
        if not args.skip_recipe:
            # One segment each: the recipe, the default, and a single unguided step (the fixed costs).
            label, options = RECIPE
            one = render(args.checkpoint, options, SEGMENT_SECONDS, wav, cache)
            base = render(args.checkpoint, [], SEGMENT_SECONDS, wav, cache)
            quick = render(args.checkpoint, ["--steps", "1", "--guidance", "1"], SEGMENT_SECONDS, wav, cache)
            segments = -(-args.seconds // SEGMENT_SECONDS)
            default = next(r for r in results if r["label"] == "default (--dtype auto), warm start")
            # the default's excerpt with each segment's sampling at the recipe's cost instead
            per_segment = {
                "recipe": one["wall_s"] - quick["wall_s"],
                "default": base["wall_s"] - quick["wall_s"],
            }
            estimate = default["wall_s"] + segments * (per_segment["recipe"] - per_segment["default"])
            results.append({"label": label, "options": options, "one_segment_wall_s": one["wall_s"],
                            "sampling_per_segment_s": per_segment, "wall_s": estimate,
                            "x_real_time": args.seconds / estimate, "estimated": True})  # fmt: skip
            print(f"{label:70s} {estimate:7.1f} s  (one segment {one['wall_s']:.1f} s, scaled)", flush=True)
    summary = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "song": SONG.name,
        "seconds": args.seconds,
        "checkpoint": f"random, {args.size} sizes; SoundStream-decoder vocoder stand-in, 14.9 M parameters",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
