"""Training throughput and peak memory: examples per second for each model size, precision and mode.

Each configuration trains in a child process of its own (so its peak resident memory is its own): a
`--warmup` step, then `--steps` timed optimizer steps of `--batch` examples drawn from a real dataset (the
Nottingham songs rendered with the bundled soundfont, built once into --data). Modes: full (every network
trains, from scratch, with Adafactor), decoder (frozen encoders, Adafactor), lora (rank-16 adapters on the
decoder's attention, AdamW). Peak memory is the child's maximum resident set (weights, optimizer state,
activations and the Python process itself), and on a GPU also torch's peak allocation there.

    .venv/bin/python bench/train_bench.py                          # all sizes, float32 and bfloat16, 3 modes
    .venv/bin/python bench/train_bench.py --sizes tiny,mini --precisions float32 --modes full

Prints a markdown table (for docs/performance.md) and writes the figures as JSON to --json. The CPU's
matrix features are printed with it: bfloat16 is fast only with AMX.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?"
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    wanted = [
        f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f") if f in flags
    ]
    return f"{model}; {', '.join(wanted) or 'no AVX-512'}{'' if 'amx_bf16' in flags else ', no AMX'}"


def ensure_dataset(data: Path) -> Path:
    if (data / "dataset.json").exists():
        return data
    subprocess.run(
        [
            sys.executable,
            "-m",
            "spectrosynth",
            "dataset",
            str(ROOT / "tests/data/midi/nottingham"),
            str(data),
            "--soundfont",
            "builtin",
            "--jobs",
            "2",
            "-q",
        ],
        check=True,
    )
    return data


def one(
    size: str,
    precision: str,
    mode: str,
    data: Path,
    batch: int,
    steps: int,
    warmup: int,
    device: str = "auto",
) -> dict:
    """Runs in the child: time `steps` optimizer steps after `warmup`."""
    import torch

    from spectrosynth.pipeline import resolve_device

    dev = resolve_device(device)

    from spectrosynth.data import DatasetReader
    from spectrosynth.training.examples import TrainingExamples, collate
    from spectrosynth.training.model import add_lora, new_networks, size_configs
    from spectrosynth.training.objective import DiffusionObjective
    from spectrosynth.training.optim import make_optimizer

    nets = new_networks(size_configs(size), seed=0)
    if mode == "lora":
        nets["decoder"] = add_lora(nets["decoder"], 16, 16, "attention")
    model = (
        DiffusionObjective(
            nets["notes_encoder"], nets["continuous_encoder"], nets["decoder"], train_encoders=mode == "full"
        )
        .to(dev)
        .train()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer("adamw" if mode == "lora" else "adafactor", params, 1e-4)
    examples = TrainingExamples(DatasetReader(data), seed=0)
    autocast = precision == "bfloat16"
    times, g = [], 0
    for step in range(warmup + steps):
        began = time.perf_counter()
        examples_batch = collate([examples[g + i] for i in range(batch)]).to(dev)
        g += batch
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(examples_batch).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - began)
    seconds = sum(times) / len(times)
    return {
        "size": size,
        "precision": precision,
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trained_m": sum(p.numel() for p in params) / 1e6,
        "seconds_per_step": seconds,
        "examples_per_second": batch / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None,
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,mini,small,base")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--modes", default="full,decoder,lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--data", type=Path, default=Path("/tmp/spectrosynth-bench-data"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/train_bench.json")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "PRECISION", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.data, args.batch, args.steps, args.warmup, args.device)))
        return
    data = ensure_dataset(args.data)
    print(f"CPU: {cpu_flags()}", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            for mode in args.modes.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    size,
                    precision,
                    mode,
                    "--data",
                    str(data),
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--device",
                    args.device,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(
                        f"{size} {precision} {mode}: failed: {out.stderr.strip().splitlines()[-1:]}",
                        flush=True,
                    )
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{size:5s} {precision:8s} {mode:7s} {row['examples_per_second']:7.2f} examples/s "
                    f"{row['seconds_per_step']:7.2f} s/step  peak {row['peak_rss_gb']:.2f} GB",
                    flush=True,
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu_flags(), "rows": rows}, indent=2) + "\n")
    print("\n| size | precision | mode | parameters (trained) | examples/s | s/step | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['precision']} | {r['mode']} | {r['parameters_m']:.1f} M "
            f"({r['trained_m']:.2f} M) | {r['examples_per_second']:.2f} | {r['seconds_per_step']:.2f} "
            f"| {r['peak_rss_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    main()
