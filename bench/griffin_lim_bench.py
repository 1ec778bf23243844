"""Speed and accuracy of the Griffin-Lim vocoder (`--vocoder griffin-lim`, spectrosynth.griffin_lim).

On a real recording's log-mel (tests/data/audio/waltzes1-timgm6mb.flac: 8 s of a soundfont render of a
folk tune), for several iteration counts:

- seconds of compute per second of audio, and × real time (audio seconds / compute seconds), the best of
  --repeats runs of the whole 8 s spectrogram, both as wall-clock time and as the process's CPU time. On one
  torch thread (the default, --threads 1) the CPU time is the wall-clock time an idle core would take, and
  unlike the wall-clock time it hardly moves when other processes share the CPU;
- the reconstruction's error: its log-mel, computed again by the front end (spectrosynth.features), against
  the input's: mean absolute difference in natural-log units (log-mel L1), and the mel spectral convergence
  ||mel(x) - mel|| / ||mel|| (Frobenius norms of the mel magnitudes);
- the same for the two ways from mel to linear magnitudes: non-negative least squares (the default) and the
  clamped pseudo-inverse alone (nnls_iterations=0), and for three momentum values;
- the streamed path the renderer takes (StreamingVocoder, 256-frame chunks with 64 frames of context) at
  the default, and its largest difference from vocoding the whole spectrogram at once.

Prints the CPU's flags that decide torch's fast paths (amx_bf16, avx512_bf16, avx512_vnni, avx_vnni; from
/proc/cpuinfo) and writes bench/results/griffin_lim_bench.json.

    .venv/bin/python bench/griffin_lim_bench.py                 # about 20 s on a 2-core CPU
    .venv/bin/python bench/griffin_lim_bench.py --repeats 1 --iterations 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spectrosynth import features
from spectrosynth.constants import SAMPLE_RATE
from spectrosynth.griffin_lim import DEFAULT_ITERATIONS, DEFAULT_MOMENTUM, NNLS_ITERATIONS, GriffinLimVocoder
from spectrosynth.vocoder import StreamingVocoder

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "data" / "audio" / "waltzes1-timgm6mb.flac"
RESULTS = ROOT / "bench" / "results" / "griffin_lim_bench.json"
FLAGS = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni")
ITERATIONS = (0, 1, 2, 4, 8, 16, 32, 48, 63, 100)


def cpu_info() -> dict[str, object]:
    """The CPU's model name and which of FLAGS it has, from /proc/cpuinfo (empty elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": name, "cpus": os.cpu_count(), **{flag: flag in flags for flag in FLAGS}}


def errors(audio: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The re-analysed log-mel's mean absolute error and the mel spectral convergence."""
    again = features.log_mel_spectrogram(audio.astype(np.float64))
    mel, target_mel = np.exp(again.astype(np.float64)), np.exp(target.astype(np.float64))
    return {
        "log_mel_l1": float(np.abs(again - target).mean()),
        "spectral_convergence": float(np.linalg.norm(mel - target_mel) / np.linalg.norm(target_mel)),
    }


def timed(vocode, mel: np.ndarray, repeats: int) -> tuple[np.ndarray, float, float]:
    """The audio, and the best wall-clock and CPU seconds of `repeats` runs."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        audio = vocode(mel)
        wall, cpu = min(wall, time.perf_counter() - began), min(cpu, time.process_time() - began_cpu)
    return audio, wall, cpu


def speed(wall: float, cpu: float, seconds: float) -> dict[str, float]:
    return {"seconds": wall, "x_real_time": seconds / wall, "cpu_seconds": cpu,
            "cpu_seconds_per_audio_second": cpu / seconds, "x_real_time_cpu": seconds / cpu}  # fmt: skip


def measure(vocoder: GriffinLimVocoder, mel: np.ndarray, seconds: float, repeats: int) -> dict[str, float]:
    audio, wall, cpu = timed(vocoder, mel, repeats)
    assert audio.shape == (len(mel) * 320,) and audio.dtype == np.float32
    return {
        "iterations": vocoder.iterations,
        "nnls_iterations": vocoder.nnls_iterations,
        "momentum": vocoder.momentum,
        **speed(wall, cpu, seconds),
        **errors(audio, mel),
    }


def row(r: dict[str, float]) -> str:
    return (f"{r['iterations']:5d} {r['nnls_iterations']:5d} {r['momentum']:5.2f} {r['seconds']:7.3f} "
            f"{r['x_real_time']:7.1f} {r['cpu_seconds']:7.3f} {r['cpu_seconds_per_audio_second']:8.4f} "
            f"{r['x_real_time_cpu']:7.1f} {r['log_mel_l1']:7.4f} "
            f"{r['spectral_convergence']:7.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, nargs="+", default=list(ITERATIONS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # before any torch work
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} CPUs; " + ", ".join(f"{f} {'yes' if cpu[f] else 'no'}"
                                                              for f in FLAGS))  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")

    audio = features.load_audio(AUDIO)
    mel = features.log_mel_spectrogram(audio)
    seconds = len(audio) / SAMPLE_RATE
    print(f"{AUDIO.name}: {seconds:.2f} s, {len(mel)} frames\n")
    GriffinLimVocoder(4, device=args.device)(mel)  # warm-up: FFT plans, thread pools, caches

    header = " iter  nnls   mom  wall s    × RT   cpu s  cpu s/s  × RT cpu  L1 log  SC mel"
    results: dict[str, object] = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "device": args.device, "audio": AUDIO.name, "audio_seconds": seconds,
                                  "frames": len(mel), "repeats": args.repeats,
                                  "default_iterations": DEFAULT_ITERATIONS,
                                  "load_average_before": os.getloadavg()[0]}  # fmt: skip
    for label, nnls in (("nnls", NNLS_ITERATIONS), ("pinv", 0)):
        print(f"mel -> magnitude: {label}\n{header}")
        table = []
        for n in args.iterations:
            r = measure(GriffinLimVocoder(n, args.device, nnls_iterations=nnls), mel, seconds, args.repeats)
            table.append(r)
            print(row(r), flush=True)
        results[label] = table
        print()

    print(f"momentum, {DEFAULT_ITERATIONS} iterations\n{header}")
    results["momentum"] = []
    for momentum in (0.0, 0.9, DEFAULT_MOMENTUM):
        r = measure(GriffinLimVocoder(DEFAULT_ITERATIONS, args.device, momentum), mel, seconds, args.repeats)
        results["momentum"].append(r)
        print(row(r), flush=True)

    vocoder = GriffinLimVocoder(device=args.device)
    whole = vocoder(mel)

    def streamed(m: np.ndarray) -> np.ndarray:
        stream = StreamingVocoder(vocoder)
        return np.concatenate([*stream.feed(m), *stream.finish()])

    pieces, wall, cpu = timed(streamed, mel, args.repeats)
    results["streamed"] = {
        "iterations": vocoder.iterations,
        **speed(wall, cpu, seconds),
        "max_abs_difference_from_whole": float(np.abs(pieces - whole).max()),
        **errors(pieces, mel),
    }
    s = results["streamed"]
    print(f"\nstreamed (StreamingVocoder 256 + 64 frames), {vocoder.iterations} iterations: "
          f"{s['x_real_time_cpu']:.1f}× real time (CPU time), L1 {s['log_mel_l1']:.4f}, largest difference "
          "from the whole "
          f"{s['max_abs_difference_from_whole']:.2e}")  # fmt: skip
    results["load_average_after"] = os.getloadavg()[0]  # other processes' load: it slows wall-clock times
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
