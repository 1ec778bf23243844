"""Speed and memory of spectrosynth against the reference (diffusers' SpectrogramDiffusionPipeline).

Builds a random checkpoint in the published base configuration (411.7 M parameters, the same shapes and
arithmetic as google/music-spectrogram-diffusion), then renders the first segments of the same real
multi-track MIDI file with spectrosynth and with diffusers, for each precision, each run in its own process.
spectrosynth uses `--sampler diffusers --guidance 1`, diffusers' own sampler, so both do the same work; the
default sampler's speed is measured by bench/sampler_speed.py.
Per run it reports:

- per-step time: the median time of one decoder call;
- encoder cost per segment: segment time minus its decoder calls (encoders, cross-attention keys, noise);
- segment time at the run's step count, and the real-time factor (5.12 s of audio / segment time);
  these three are steady-state figures, over the segments after the first (which also warms up caches and
  pages in memory-mapped weights); the time from start to the first step is reported as start-up;
- peak resident memory of the process;
- the spectrogram's difference from diffusers in float32 (max and mean absolute, log-mel).

    .venv/bin/python bench/speed_bench.py                    # 3 segments x 100 steps, float32 + bfloat16
    .venv/bin/python bench/speed_bench.py --segments 1 --steps 20 --checkpoint /tmp/base-model

The checkpoint is written once to --checkpoint (default: a folder in the system temp dir) and reused.
Needs the test extras (`make install`): diffusers 0.32.2, transformers 4.45.2, note-seq 0.0.5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIDI = ROOT / "tests" / "data" / "midi" / "note-seq" / "example_complex.mid"
SEGMENT_SECONDS = 5.12


def _tokens(midi: Path, segments: int) -> list[list[int]]:
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import tokenize

    return [s.tokens for s in tokenize(read_midi(midi))][:segments]


class DecoderTimer:
    """Times every call of a module's forward, and the wall time of each segment."""

    def __init__(self, module):
        self.calls: list[float] = []
        self._t0 = 0.0
        module.register_forward_pre_hook(lambda *_: setattr(self, "_t0", time.perf_counter()))
        module.register_forward_hook(lambda *_: self.calls.append(time.perf_counter() - self._t0))


def worker(args) -> dict:
    """One run: `impl` (ours or reference) at `dtype`; prints a JSON result line."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    tokens = _tokens(Path(args.midi), args.segments)
    began = time.perf_counter()
    segment_ends: list[float] = []
    if args.impl == "ours":
        from spectrosynth import Synthesizer

        synth = Synthesizer.from_pretrained(args.checkpoint, device="cpu", dtype=args.dtype)
        loaded = time.perf_counter()
        timer = DecoderTimer(synth.decoder)
        mels = []
        # The reference's own sampler, unguided: the same work per step on both sides.
        for mel in synth.iter_mel(tokens, steps=args.steps, seed=0, sampler="diffusers", guidance=1.0):
            segment_ends.append(time.perf_counter())
            mels.append(mel)
        mel = np.concatenate(mels)
    else:
        import warnings

        warnings.simplefilter("ignore")
        from diffusers import DDPMScheduler, T5FilmDecoder
        from diffusers.pipelines.deprecated.spectrogram_diffusion import (
            SpectrogramContEncoder,
            SpectrogramDiffusionPipeline,
            SpectrogramNotesEncoder,
        )

        folder = args.checkpoint
        pipe = SpectrogramDiffusionPipeline(
            SpectrogramNotesEncoder.from_pretrained(folder, subfolder="notes_encoder"),
            SpectrogramContEncoder.from_pretrained(folder, subfolder="continuous_encoder"),
            T5FilmDecoder.from_pretrained(folder, subfolder="decoder"),
            DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
            None,
        ).to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        loaded = time.perf_counter()
        timer = DecoderTimer(pipe.decoder)
        padded = [t + [0] * (2048 - len(t)) for t in tokens]
        out = pipe(
            padded,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=args.steps,
            output_type="mel",
            callback=lambda i, full: segment_ends.append(time.perf_counter()),
        )
        mel = out.audios[0]
    np.save(args.mel, mel.astype(np.float32))
    starts = [loaded, *segment_ends[:-1]]
    segment_times = [end - start for start, end in zip(starts, segment_ends, strict=True)]
    per_segment_calls = [timer.calls[i * args.steps : (i + 1) * args.steps] for i in range(len(tokens))]
    encoder = [seg - sum(calls) for seg, calls in zip(segment_times, per_segment_calls, strict=True)]
    steady = slice(1, None) if len(tokens) > 1 else slice(None)  # the first segment also warms up
    return {
        "impl": args.impl,
        "dtype": args.dtype,
        "load_s": loaded - began,
        "first_step_s": loaded - began + (timer.calls[0] if timer.calls else 0) + encoder[0],
        "first_segment_s": segment_times[0],
        "step_s": statistics.median(c for calls in per_segment_calls[steady] for c in calls),
        "encoder_s": statistics.median(encoder[steady]),
        "segment_s": statistics.median(segment_times[steady]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "tokens": [len(t) for t in tokens],
    }


def run(args, impl: str, dtype: str, mel: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", impl, "--dtype", dtype, "--checkpoint", str(args.checkpoint),
        "--midi", str(args.midi), "--segments", str(args.segments), "--steps", str(args.steps),
        "--mel", str(mel),
    ]  # fmt: skip
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{impl} {dtype} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--midi", type=Path, default=DEFAULT_MIDI)
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument(
        "--checkpoint", type=Path, default=Path(tempfile.gettempdir()) / "spectrosynth-base-random"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--mel", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.impl = args.worker
        print(json.dumps(worker(args)))
        return

    import numpy as np
    import torch

    from spectrosynth.testing import write_checkpoint

    if not (args.checkpoint / "model_index.json").exists():
        print(f"writing a random base checkpoint to {args.checkpoint} ...", flush=True)
        write_checkpoint(args.checkpoint, "base", seed=0)
    import diffusers
    import transformers

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    )
    threads = torch.get_num_threads()
    print(f"python {platform.python_version()}, torch {torch.__version__} ({threads} threads), "
          f"diffusers {diffusers.__version__}, transformers {transformers.__version__}")  # fmt: skip
    print(f"song: {args.midi.name}, first {args.segments} segments, {args.steps} steps\n", flush=True)
    results, mels = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.precisions.split(","):
            for impl in ("reference", "ours"):
                mel = Path(tmp) / f"{impl}-{dtype}.npy"
                result = run(args, impl, dtype, mel)
                mels[(impl, dtype)] = np.load(mel)
                results.append(result)
                print(f"  {impl:9} {dtype:8} step {result['step_s']:.3f} s, "
                      f"segment {result['segment_s']:.1f} s, "
                      f"peak {result['peak_rss_gb']:.2f} GB", flush=True)  # fmt: skip
    truth = mels.get(("reference", "float32"))
    for r in results:
        r["rtf"] = SEGMENT_SECONDS / r["segment_s"]
        if truth is not None:
            diff = np.abs(mels[(r["impl"], r["dtype"])] - truth)
            r["max_diff"], r["mean_diff"] = float(diff.max()), float(diff.mean())
    print()
    header = ("implementation", "dtype", "step s", "encoders s/seg", "segment s", "x real time", "start-up s",
              "peak GB", "max |d| vs ref f32", "mean |d|")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        name = "diffusers 0.32.2" if r["impl"] == "reference" else "spectrosynth"
        print(f"| {name} | {r['dtype']} | {r['step_s']:.3f} | {r['encoder_s']:.2f} | {r['segment_s']:.1f} | "
              f"{r['rtf']:.3f} | {r['first_step_s']:.1f} | {r['peak_rss_gb']:.2f} | "
              f"{r.get('max_diff', math.nan):.2e} | {r.get('mean_diff', math.nan):.2e} |")  # fmt: skip
    by = {(r["impl"], r["dtype"]): r for r in results}
    print()
    for dtype in args.precisions.split(","):
        ref, ours = by.get(("reference", dtype)), by.get(("ours", dtype))
        if ref and ours:
            print(f"{dtype}: step {ref['step_s'] / ours['step_s']:.1f}x faster, encoders "
                  f"{ref['encoder_s'] / ours['encoder_s']:.1f}x faster, segment "
                  f"{ref['segment_s'] / ours['segment_s']:.1f}x faster")  # fmt: skip
    if ("reference", "float32") in by and ("ours", "bfloat16") in by:
        ratio = by[("reference", "float32")]["segment_s"] / by[("ours", "bfloat16")]["segment_s"]
        print(
            f"defaults (diffusers float32 vs spectrosynth --dtype auto = bfloat16 here): {ratio:.1f}x faster"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
