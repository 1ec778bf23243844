"""Speed of each sampler, of guidance, and of the default settings against the authors' recipe and diffusers.

On a random checkpoint in the published base configuration (the same shapes and arithmetic as
google/music-spectrogram-diffusion), in one process per measurement group:

1. per sampler at its default steps and guidance 2 (and a 10-step draft, and without guidance): decoder
   passes, wall time of one 5.12 s segment
   (segment 2 of example_complex.mid: 225 tokens and the previous segment as context; both encoders,
   every step and the sampler arithmetic; the vocoder excluded), and the real-time factor;
   the authors' recipe is `ddpm` with 1000 steps and guidance 2;
2. the cost of one guided step against an unguided one, in float32 and in bfloat16;
3. end to end, from a fresh process to the written file: `spectrosynth render` with its defaults against
   diffusers' SpectrogramDiffusionPipeline with its defaults (100 steps, float32), on the first 3 segments.

    .venv/bin/python bench/sampler_speed.py                 # about 20 minutes on a 2-core CPU
    .venv/bin/python bench/sampler_speed.py --skip-authors --skip-diffusers   # a few minutes

Needs the test extras (`make install`) for the diffusers comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIDI = ROOT / "tests" / "data" / "midi" / "note-seq" / "example_complex.mid"
SEGMENT_SECONDS = 5.12
END_TO_END_SEGMENTS = 3


def _segments(n: int) -> list[list[int]]:
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import tokenize

    return [s.tokens for s in tokenize(read_midi(MIDI))][:n]


def machine() -> str:
    import torch

    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line)
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        extras = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]
    except (OSError, StopIteration):
        name, extras = platform.processor() or platform.machine(), []
    return (f"{name}, {os.cpu_count()} CPUs ({', '.join(extras) or 'no bf16 extensions'}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip


def per_sampler(checkpoint: Path, dtype: str, skip_authors: bool) -> list[dict]:
    """One segment with context, per sampler at its default steps, guidance 2 (and diffusers at 1)."""
    import torch

    from spectrosynth import Synthesizer
    from spectrosynth.constants import FRAMES_PER_SEGMENT, NUM_MEL_BINS, SAMPLER_STEPS
    from spectrosynth.pipeline import resolve_sampler, scale_to_log_mel
    from spectrosynth.sampling import decoder_passes, randn

    synth = Synthesizer.from_pretrained(checkpoint, device="cpu", dtype=dtype)
    first, second = _segments(2)
    context = next(synth.iter_mel([first], steps=4))  # any spectrogram will do as context
    runs = [(name, steps, 2.0) for name, steps in SAMPLER_STEPS.items()]
    runs += [("dpmpp-2m", 10, 2.0), ("unipc", 20, 1.0), ("diffusers", 100, 1.0)]  # a draft, no guidance
    if skip_authors:
        runs = [r for r in runs if r[0] != "ddpm"]
    synth.segment_denoiser(second, context)(torch.zeros(1, 256, 128), 0.5)  # warm up
    results = []
    for name, steps, guidance in runs:
        sample, _ = resolve_sampler(name, steps, guidance, synth.schedule)
        began = time.perf_counter()
        denoise = synth.segment_denoiser(second, context, guidance)  # both encoders, K/V for every layer
        g = torch.Generator().manual_seed(0)
        x = sample(denoise, randn((1, FRAMES_PER_SEGMENT, NUM_MEL_BINS), g), steps, g)
        scale_to_log_mel(x.float()).numpy()
        wall = time.perf_counter() - began
        results.append({"sampler": name, "steps": steps, "guidance": guidance, "dtype": dtype,
                        "passes": decoder_passes(steps, guidance), "segment_s": wall,
                        "x_real_time": SEGMENT_SECONDS / wall})  # fmt: skip
        print(f"  {name:12} {steps:5} steps, guidance {guidance:g}: {wall:7.2f} s per segment, "
              f"{SEGMENT_SECONDS / wall:.2f}x real time", flush=True)  # fmt: skip
    return results


def step_ratio(checkpoint: Path, dtype: str, repeats: int = 15) -> dict:
    """Median time of one network evaluation with and without guidance (segment 2, with context)."""
    import torch

    from spectrosynth import Synthesizer

    synth = Synthesizer.from_pretrained(checkpoint, device="cpu", dtype=dtype)
    first, second = _segments(2)
    context = next(synth.iter_mel([first], steps=2, guidance=1.0))
    z = torch.randn(1, 256, 128, dtype=torch.float64)
    times = {}
    for guidance in (1.0, 2.0, 1.0, 2.0):  # interleaved, twice, against drift
        denoise = synth.segment_denoiser(second, context, guidance)
        denoise(z, 0.5)
        samples = []
        for i in range(repeats):
            began = time.perf_counter()
            denoise(z, 0.5 + i * 1e-4)
            samples.append(time.perf_counter() - began)
        times.setdefault(guidance, []).extend(samples)
    unguided, guided = (statistics.median(times[g]) for g in (1.0, 2.0))
    print(f"  {dtype}: unguided step {unguided:.3f} s, guided {guided:.3f} s: {guided / unguided:.2f}x",
          flush=True)  # fmt: skip
    return {"dtype": dtype, "unguided_s": unguided, "guided_s": guided, "ratio": guided / unguided}


def end_to_end(checkpoint: Path, skip_diffusers: bool) -> dict:
    """Fresh processes, from start to the written audio, on the first 3 segments of the song."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = f"{END_TO_END_SEGMENTS * SEGMENT_SECONDS - 0.1:.2f}"  # a whole 5.12 s would add a segment
        cmd = [sys.executable, "-m", "spectrosynth.cli", "render", str(MIDI), f"{tmp}/ours.wav", "--model",
               str(checkpoint), "--device", "cpu", "--duration", clip, "--no-trim", "--quiet"]  # fmt: skip
        began = time.perf_counter()
        subprocess.run(cmd, check=True)
        results["spectrosynth_defaults_s"] = time.perf_counter() - began
        print(f"  spectrosynth render (defaults): {results['spectrosynth_defaults_s']:.1f} s", flush=True)
        if not skip_diffusers:
            began = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--diffusers-worker", str(checkpoint), tmp], check=True)
            results["diffusers_defaults_s"] = time.perf_counter() - began
            print(f"  diffusers pipeline (defaults): {results['diffusers_defaults_s']:.1f} s", flush=True)
    return results


def diffusers_worker(checkpoint: str, out: str) -> None:
    """diffusers' pipeline at its defaults (100 steps, float32), MIDI to a written WAV."""
    import warnings

    warnings.simplefilter("ignore")
    import soundfile as sf
    import torch
    from diffusers import DDPMScheduler, MidiProcessor, OnnxRuntimeModel, T5FilmDecoder
    from diffusers.pipelines.deprecated.spectrogram_diffusion import (
        SpectrogramContEncoder,
        SpectrogramDiffusionPipeline,
        SpectrogramNotesEncoder,
    )

    pipe = SpectrogramDiffusionPipeline(
        SpectrogramNotesEncoder.from_pretrained(checkpoint, subfolder="notes_encoder"),
        SpectrogramContEncoder.from_pretrained(checkpoint, subfolder="continuous_encoder"),
        T5FilmDecoder.from_pretrained(checkpoint, subfolder="decoder"),
        DDPMScheduler.from_pretrained(checkpoint, subfolder="scheduler"),
        OnnxRuntimeModel.from_pretrained(Path(checkpoint) / "melgan"),
    )
    pipe.set_progress_bar_config(disable=True)
    tokens = MidiProcessor()(str(MIDI))[:END_TO_END_SEGMENTS]
    audio = pipe(tokens, generator=torch.Generator().manual_seed(0)).audios[0]
    sf.write(f"{out}/diffusers.wav", audio.reshape(-1), 16000)  # the vocoder's output is (1, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/spectrosynth-base-random"))
    parser.add_argument("--skip-authors", action="store_true", help="leave out ddpm x 1000 steps")
    parser.add_argument("--skip-diffusers", action="store_true", help="leave out diffusers end to end")
    parser.add_argument("--parts", default="1,2,3", help="which measurements to run (default: all three)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--diffusers-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diffusers_worker:
        diffusers_worker(*args.diffusers_worker)
        return
    from spectrosynth.pipeline import resolve_device, resolve_dtype
    from spectrosynth.testing import write_checkpoint

    if not (args.checkpoint / "model_index.json").exists():
        print(f"writing a random base checkpoint to {args.checkpoint} ...", flush=True)
        write_checkpoint(args.checkpoint, "base", seed=0)
    auto = str(resolve_dtype("auto", resolve_device("cpu"))).removeprefix("torch.")
    print(f"machine: {machine()}\n--dtype auto is {auto} here\n", flush=True)
    report: dict = {"machine": machine(), "auto_dtype": auto}
    parts = set(args.parts.split(","))
    if "1" in parts:
        print("1. one segment per sampler, default steps, --dtype auto:")
        report["samplers"] = per_sampler(args.checkpoint, auto, args.skip_authors)
    if "2" in parts:
        print("2. guided against unguided steps:")
        report["ratio"] = [step_ratio(args.checkpoint, dtype) for dtype in ("float32", "bfloat16")]
    if "3" in parts:
        print(f"3. end to end, {END_TO_END_SEGMENTS} segments from a fresh process:")
        report["end_to_end"] = end_to_end(args.checkpoint, args.skip_diffusers)
    summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summary(report: dict) -> None:
    by = {(r["sampler"], r["guidance"]): r for r in report.get("samplers", [])}
    default = by.get(("unipc", 2.0))
    if default:
        print("\n| sampler | steps | guidance | decoder passes | per segment | x real time |")
        print("|---|---|---|---|---|---|")
    for r in report.get("samplers", []):
        print(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['passes']} | "
              f"{r['segment_s']:.2f} s | {r['x_real_time']:.2f} |")  # fmt: skip
    if default and ("ddpm", 2.0) in by:
        print(f"\ndefault vs the authors' recipe (ddpm 1000 x guidance 2), per segment: "
              f"{by[('ddpm', 2.0)]['segment_s'] / default['segment_s']:.1f}x faster")  # fmt: skip
    e2e = report.get("end_to_end")
    if e2e:
        seconds = END_TO_END_SEGMENTS * SEGMENT_SECONDS
        print(f"end to end: spectrosynth {e2e['spectrosynth_defaults_s']:.1f} s for {seconds:.2f} s of audio "
              f"({seconds / e2e['spectrosynth_defaults_s']:.2f}x real time)")  # fmt: skip
    if e2e and "diffusers_defaults_s" in e2e:
        print(f"default vs diffusers' default end to end: "
              f"{e2e['diffusers_defaults_s'] / e2e['spectrosynth_defaults_s']:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
