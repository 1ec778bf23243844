"""Speed, batch throughput and end-to-end time of spectrosynth on one device (CUDA or the CPU), for
bench/gpu_check.sh. The other benchmarks in bench/ measure the CPU only (and against the reference); this one
takes --device.

    python bench/gpu_bench.py speed --checkpoint DIR --device cuda --out RESULTS
    python bench/gpu_bench.py batch --checkpoint DIR --device cuda --out RESULTS
    python bench/gpu_bench.py e2e   --checkpoint DIR --device cuda --out RESULTS

speed: each precision in turn, the first --segments segments of example_complex.mid (18 tracks with drums)
with the default sampler (unipc, --steps, guidance 2: two decoder passes a step): load time, first segment
(with the device's warm-up), then the median of the later segments, its real-time factor and time per
decoder pass, and the peak device memory.
batch: --batch-sizes songs of --segments segments each (the same tokens, each song its own seed) through
Synthesizer.iter_mel_batch in --dtype: segments per second and audio seconds per second, after a warm-up.
e2e: `spectrosynth render --device DEVICE` from a fresh process to the written file, twice, on the first
--seconds of the song.

Each writes NAME.json (with the machine) and NAME.csv (one row per run) into --out; `table --out RESULTS`
prints them as markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SONG = ROOT / "tests" / "data" / "midi" / "note-seq" / "example_complex.mid"
SEGMENT_SECONDS = 5.12


def machine(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gb=props.total_memory / 1e9
        )
    return info


def tokens(segments: int) -> list[list[int]]:
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import tokenize

    return [s.tokens for s in tokenize(read_midi(SONG))][:segments]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def write(out: Path, name: str, report: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def speed(args) -> None:
    from spectrosynth import Synthesizer

    segs = tokens(args.segments)
    rows = []
    for precision in args.precisions.split(","):
        reset_peak(args.device)
        began = time.perf_counter()
        synth = Synthesizer.from_pretrained(
            args.checkpoint, device=args.device, dtype=precision, progress=False
        )
        sync(args.device)
        loaded = time.perf_counter()
        ends = []
        for _ in synth.iter_mel(
            segs, steps=args.steps, seed=0
        ):  # each mel is copied to the CPU: synchronized
            ends.append(time.perf_counter())
        times = [b - a for a, b in zip([loaded, *ends[:-1]], ends, strict=True)]
        steady = statistics.median(times[1:] if len(times) > 1 else times)
        passes = 2 * args.steps
        row = {
            "precision": synth.precision,
            "asked": precision,
            "steps": args.steps,
            "decoder_passes_per_segment": passes,
            "segments": len(segs),
            "load_s": round(loaded - began, 3),
            "first_segment_s": round(times[0], 3),
            "segment_s": round(steady, 4),
            "ms_per_decoder_pass": round(steady / passes * 1000, 3),
            "x_real_time": round(SEGMENT_SECONDS / steady, 3),
            "peak_device_gb": peak_gb(args.device),
        }
        rows.append(row)
        print(f"  {row['precision']:9} load {row['load_s']:.1f} s, segment {steady:.3f} s "
              f"({row['x_real_time']:.2f}x real time, {row['ms_per_decoder_pass']:.1f} ms a pass)",
              flush=True)  # fmt: skip
        del synth
    report = {"benchmark": "speed", "machine": machine(args.device), "song": SONG.name, "sampler": "unipc",
              "guidance": 2.0}  # fmt: skip
    write(args.out, "speed", report, rows)


def batch(args) -> None:
    from spectrosynth import Synthesizer

    synth = Synthesizer.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, progress=False)
    song = tokens(args.segments)
    for _ in synth.iter_mel_batch([song[:1]], steps=1, seeds=[0]):  # warm-up: kernels, allocator
        pass
    rows = []
    for size in (int(n) for n in args.batch_sizes.split(",")):
        reset_peak(args.device)
        began = time.perf_counter()
        done = sum(1 for _ in synth.iter_mel_batch([song] * size, steps=args.steps, seeds=list(range(size))))
        wall = time.perf_counter() - began
        row = {
            "precision": synth.precision,
            "batch_size": size,
            "segments": done,
            "steps": args.steps,
            "wall_s": round(wall, 3),
            "segments_per_s": round(done / wall, 3),
            "audio_s_per_s": round(done * SEGMENT_SECONDS / wall, 3),
            "peak_device_gb": peak_gb(args.device),
        }
        rows.append(row)
        print(f"  batch {size:3}: {done} segments in {wall:.2f} s, "
              f"{row['audio_s_per_s']:.2f} s of audio a second", flush=True)  # fmt: skip
    if rows:
        base = rows[0]["segments_per_s"]
        for row in rows:
            row["speedup_over_first"] = round(row["segments_per_s"] / base, 3)
    report = {"benchmark": "batch", "machine": machine(args.device), "song": SONG.name, "sampler": "unipc",
              "guidance": 2.0}  # fmt: skip
    write(args.out, "batch", report, rows)


def e2e(args) -> None:
    rows = []
    out_wav = args.out / "e2e-render.wav"
    args.out.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, args.repeat + 1):
        command = [sys.executable, "-m", "spectrosynth", "render", str(SONG), str(out_wav), "--model",
                   str(args.checkpoint), "--device", args.device, "--dtype", args.dtype, "--duration",
                   f"{args.seconds:g}", "--steps", str(args.steps), "--force", "--quiet"]  # fmt: skip
        began = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if result.returncode != 0:
            raise SystemExit(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        rows.append({"attempt": attempt, "dtype": args.dtype, "steps": args.steps, "seconds": args.seconds,
                     "wall_s": round(wall, 3), "x_real_time": round(args.seconds / wall, 3)})  # fmt: skip
        print(f"  render {attempt}: {wall:.1f} s for {args.seconds:g} s of audio", flush=True)
    out_wav.unlink(missing_ok=True)
    report = {"benchmark": "e2e", "machine": machine(args.device), "song": SONG.name}
    write(args.out, "e2e", report, rows)


def table(args) -> None:
    """Markdown tables of whichever of speed, batch and e2e are in --out, for summary.md."""
    for name in ("speed", "batch", "e2e"):
        path = args.out / f"{name}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        rows = report.get("rows", [])
        where = report.get("machine", {})
        device = where.get("gpu") or f"CPU ({where.get('cpu')}, {where.get('threads')} threads)"
        print(f"### {name} on {device}, torch {where.get('torch')}\n")
        if not rows:
            print("(no rows)\n")
            continue
        fields = list(dict.fromkeys(k for row in rows for k in row))
        print("| " + " | ".join(fields) + " |")
        print("|" + "---|" * len(fields))
        for row in rows:
            print("| " + " | ".join("" if row.get(k) is None else str(row.get(k)) for k in fields) + " |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("speed", "batch", "e2e"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", type=Path, required=True)
        p.add_argument("--device", default="cuda")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--steps", type=int, default=20)
    sub.choices["speed"].add_argument("--segments", type=int, default=4)
    sub.choices["speed"].add_argument("--precisions", default="float32,bfloat16,float16")
    sub.choices["batch"].add_argument("--segments", type=int, default=2)
    sub.choices["batch"].add_argument("--batch-sizes", default="1,2,4,8")
    sub.choices["batch"].add_argument("--dtype", default="auto")
    sub.choices["e2e"].add_argument("--seconds", type=float, default=10.24)
    sub.choices["e2e"].add_argument("--dtype", default="auto")
    sub.choices["e2e"].add_argument("--repeat", type=int, default=2)
    sub.add_parser("table", help="markdown tables of the results in --out").add_argument(
        "--out", type=Path, required=True
    )
    args = parser.parse_args()
    {"speed": speed, "batch": batch, "e2e": e2e, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
