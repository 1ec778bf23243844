"""The authors' small model (small_with_context) against the base model (the published one): per decoder pass
and end to end, in float32, bfloat16 and int8, the two sizes side by side in one run (docs/performance.md).

    OMP_NUM_THREADS=1 nice -n 10 taskset -c 1 .venv/bin/python bench/small_vs_base.py

Random checkpoints in the exact sizes (spectrosynth.testing, safetensors, with the SoundStream-decoder
vocoder stand-in of the published vocoder's size): small 104.0 M parameters (d_model 512, 8+8 layers, 6
heads of 64, d_ff 1024), base 411.7 M (768, 12+12, 12 x 64, 2048). The arithmetic is that of the real
weights; the audio is noise.

1. Per pass: one guided decoder pass (the conditional and the unconditional row, 256 frames, the
   cross-attention keys of segment 2 of example_complex.mid with segment 1's render as context), small and
   base loaded together in each precision and timed alternately, the median of --repeats each.
2. End to end: `spectrosynth render` in a fresh process (bench/end_to_end.py's `render`) on the first
   --seconds of example_complex.mid (18 tracks with drums), the default sampler (UniPC, 20 steps, guidance 2:
   40 passes per segment), small and base alternately in each precision. Each is preceded by an untimed
   one-step render of one second in the same precision, so that the timed one starts warm (the converted
   copy of spectrosynth.converted made), as every render after a machine's first does.

Run it pinned to one core with one thread, as above: the ratio small/base is what it is for; both sizes are
measured under the same load, alternately. Each figure is given as wall time and as CPU time (the pass's
thread, the render process's user + system time): on a core shared with other work the wall time follows
the others' load, the CPU time much less, so the ratios are taken from both. Writes
bench/results/small_vs_base.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from end_to_end import SONG, ensure_checkpoint, render  # noqa: E402
from train_bench import cpu_flags  # noqa: E402

SIZES = ("small", "base")
PRECISIONS = ("float32", "bfloat16", "int8")


def cpu_identity() -> dict[str, str]:
    """The CPU's model name, family and model numbers, and its bfloat16 matrix flags (/proc/cpuinfo)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        return {}
    flags = fields.pop("flags", "").split()
    fields["bf16_flags"] = " ".join(
        f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni") if f in flags
    )
    return fields


def per_pass(checkpoints: dict[str, Path], repeats: int) -> dict[str, dict[str, float]]:
    import torch

    from spectrosynth.midi import read_midi
    from spectrosynth.pipeline import FilmCache, Synthesizer
    from spectrosynth.tokens import prepare

    segments = [s.tokens for s in prepare(read_midi(SONG)).segments[:2]]
    z = torch.randn(1, 256, 128, generator=torch.Generator().manual_seed(1))
    results = {}
    for precision in PRECISIONS:
        prepared = {}
        with torch.inference_mode():
            for size in SIZES:
                synth = Synthesizer.from_pretrained(
                    checkpoints[size], device="cpu", dtype=precision, progress=False
                )
                context = synth.generate_mel(segments[:1], steps=1, seed=0)
                kvs, mask = synth._encode([segments[1]], [torch.as_tensor(context)[None]])
                films = FilmCache(synth.decoder, synth.device)(0.5)
                prepared[size] = (synth, kvs, mask, films)
            samples = {size: [] for size in SIZES}
            cpu = {size: [] for size in SIZES}
            for _ in range(repeats + 1):  # the first of each is a warm-up
                for size, (synth, kvs, mask, films) in prepared.items():
                    began, began_cpu = time.perf_counter(), time.thread_time()
                    synth.decoder(z.to(synth.dtype), films, kvs, mask, unconditional=True)  # 2 rows
                    samples[size].append(time.perf_counter() - began)
                    cpu[size].append(time.thread_time() - began_cpu)
        row = {f"{size}_s": statistics.median(samples[size][1:]) for size in SIZES}
        row.update({f"{size}_cpu_s": statistics.median(cpu[size][1:]) for size in SIZES})
        row["ratio_small_to_base"] = row["small_s"] / row["base_s"]
        row["cpu_ratio_small_to_base"] = row["small_cpu_s"] / row["base_cpu_s"]
        results[precision] = row
        sizes = "  ".join(
            f"{size} {row[f'{size}_s']:.3f} s ({row[f'{size}_cpu_s']:.3f} s CPU)" for size in SIZES
        )
        ratios = f"{row['ratio_small_to_base']:.2f} ({row['cpu_ratio_small_to_base']:.2f} CPU)"
        print(f"guided pass {precision:9s} {sizes}  small/base {ratios}", flush=True)
        del prepared
    return results


def end_to_end(checkpoints: dict[str, Path], seconds: float) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache, wav = Path(tmp) / "cache", Path(tmp) / "out.wav"
        for precision in PRECISIONS:
            row = {}
            for size in SIZES:
                warm = ["--dtype", precision, "--steps", "1", "--guidance", "1"]
                render(checkpoints[size], warm, 1.0, wav, cache)  # makes the converted copy, untimed
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = render(checkpoints[size], ["--dtype", precision], seconds, wav, cache)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                row[f"{size}_wall_s"], row[f"{size}_x_real_time"] = r["wall_s"], r["x_real_time"]
                row[f"{size}_cpu_s"] = cpu_s
                speed = f"{r['wall_s']:7.1f} s ({cpu_s:.1f} s CPU)  {r['x_real_time']:.3f}x real time"
                print(f"end to end {precision:9s} {size:5s} {speed}", flush=True)
            row["ratio_small_to_base"] = row["small_wall_s"] / row["base_wall_s"]
            row["cpu_ratio_small_to_base"] = row["small_cpu_s"] / row["base_cpu_s"]
            results[precision] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/small_vs_base.json")
    args = parser.parse_args()
    os.environ["SPECTROSYNTH_CACHE"] = tempfile.mkdtemp(prefix="spectrosynth-small-vs-base-")
    checkpoints = {
        size: ensure_checkpoint(Path(tempfile.gettempdir()) / f"spectrosynth-{size}-soundstream", size)
        for size in SIZES
    }
    import torch

    began, load_before = time.time(), os.getloadavg()
    passes = per_pass(checkpoints, args.repeats)
    totals = None if args.skip_end_to_end else end_to_end(checkpoints, args.seconds)
    summary = {
        "cpu": cpu_flags(),
        "cpu_identity": cpu_identity(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "wall_minutes": round((time.time() - began) / 60, 1),
        "song": SONG.name,
        "seconds": args.seconds,
        "checkpoints": "random; small 104.0 M and base 411.7 M parameters (the authors' sizes), safetensors, "
        "SoundStream-decoder vocoder stand-in (14.9 M parameters)",
        "guided_pass": passes,
        "end_to_end": totals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
