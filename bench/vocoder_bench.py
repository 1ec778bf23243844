"""The vocoder's cost and the streaming context it needs, on a stand-in with the published vocoder's
architecture and size (docs/performance.md, "The vocoder's cost").

The published melgan/model.onnx cannot be downloaded here, so this writes SoundStream's decoder with random
weights at the published file's size (spectrosynth.testing.write_soundstream_vocoder: 14.9 M parameters,
59 MB) into --folder (build/ by default: not committed), in both variants: causal convolutions (the
SoundStream paper's; the stand-in's default) and non-causal ones. Then:

- its receptive field in frames, from its layers (before, after);
- parity: for each --contexts value, the largest |streamed - whole| of StreamingVocoder (256-frame chunks,
  fed a segment at a time as the renderer does) against vocoding the whole spectrogram at once, relative to
  the largest |whole|, on a random but music-like --seconds-long log-mel (harmonic notes, drum hits and a
  silence, through spectrosynth.features) and on a real one (tests/data/audio/waltzes1-timgm6mb.flac, 8 s);
- speed, onnxruntime float32 on the CPU at each of --threads intra-op threads: one 5.12 s segment (256
  frames) vocoded with 0, the default (vocoder.MODEL_CONTEXT) and the former (64) frames of context on either
  side, the best of --repeats; as seconds per segment, seconds per second of audio and × real time, both
  wall-clock and the process's CPU time.

    .venv/bin/python bench/vocoder_bench.py                       # about 3 minutes on an idle 2-core CPU
    .venv/bin/python bench/vocoder_bench.py --threads 1 --repeats 3
    .venv/bin/python bench/vocoder_bench.py --onnx ~/.cache/huggingface/.../melgan/model.onnx   # a real one

With --onnx it measures that file instead of the stand-ins (the receptive field is then only measured).
Writes bench/results/vocoder_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

AUDIO = ROOT / "tests" / "data" / "audio" / "waltzes1-timgm6mb.flac"
RESULTS = ROOT / "bench" / "results" / "vocoder_bench.json"
CONTEXTS = (0, 1, 2, 4, 8, 16, 32, 64)
OLD_CONTEXT = 64  # StreamingVocoder's context before the stand-in measured the need
EXACT = 1e-5  # relative difference within float32 rounding
CHUNK = 256  # frames of a segment: the renderer's chunk


def music_like_audio(seconds: float, seed: int = 0, rate: int = 16_000) -> np.ndarray:
    """Random but music-like audio: harmonic notes (several at a time, MIDI 36-96, 1/k partials below 8 kHz,
    10 ms attack and an exponential decay), a drum hit (a 30 ms noise burst) every half second, and 1 s of
    silence from 40 % of the way in; peak 0.9."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    audio = np.zeros(n)
    for _ in range(int(seconds * 4)):  # four notes a second
        start, length = int(rng.uniform(0, seconds) * rate), int(rng.uniform(0.2, 1.5) * rate)
        t = np.arange(min(length, n - start)) / rate
        f0 = 440.0 * 2 ** ((rng.integers(36, 97) - 69) / 12)
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t * rng.uniform(1.0, 6.0))
        note = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
                   for k in range(1, 9) if k * f0 < rate / 2)  # fmt: skip
        audio[start : start + len(t)] += rng.uniform(0.05, 0.2) * envelope * note
    for start in range(0, n, rate // 2):
        t = np.arange(min(int(0.1 * rate), n - start)) / rate
        audio[start : start + len(t)] += 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.03)
    gap = int(0.4 * n)
    audio[gap : gap + rate] = 0.0
    return (0.9 * audio / np.abs(audio).max()).astype(np.float32)


def streamed(vocoder, mel: np.ndarray, context: int) -> np.ndarray:
    """The renderer's path: StreamingVocoder fed one 256-frame segment at a time."""
    from spectrosynth.vocoder import StreamingVocoder

    stream = StreamingVocoder(vocoder, CHUNK, context)
    pieces = [a for i in range(0, len(mel), CHUNK) for a in stream.feed(mel[i : i + CHUNK])]
    return np.concatenate([*pieces, *stream.finish()])


def parity(vocoder, mel: np.ndarray, contexts: list[int]) -> list[dict[str, float]]:
    whole = vocoder(mel)
    peak = float(np.abs(whole).max())
    rows = []
    for context in contexts:
        began = time.perf_counter()
        audio = streamed(vocoder, mel, context)
        seconds = time.perf_counter() - began
        assert audio.shape == whole.shape, (audio.shape, whole.shape)
        difference = float(np.abs(audio - whole).max())
        rows.append({"context": context, "max_abs_difference": difference, "relative": difference / peak,
                     "streamed_seconds": seconds})  # fmt: skip
    return rows


def timed(vocoder, mel: np.ndarray, repeats: int) -> tuple[float, float]:
    """The best wall-clock and CPU seconds of `repeats` calls, after one untimed call."""
    vocoder(mel)
    wall = cpu = float("inf")
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        vocoder(mel)
        wall, cpu = min(wall, time.perf_counter() - began), min(cpu, time.process_time() - began_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each; the best counts")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the music-like log-mel")
    parser.add_argument(
        "--channels", type=int, default=None, help="the stand-in's C (default: published size)"
    )
    parser.add_argument("--onnx", type=Path, help="measure this vocoder file instead of the stand-ins")
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "vocoder_bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import onnxruntime
    import torch

    from spectrosynth import features, testing
    from spectrosynth.constants import HOP_LENGTH, SAMPLE_RATE
    from spectrosynth.vocoder import MODEL_CONTEXT, Vocoder

    torch.set_num_threads(1)
    channels = args.channels or testing.SOUNDSTREAM_CHANNELS
    cpu = cpu_flags()
    print(f"CPU: {cpu}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")

    music = features.log_mel_spectrogram(music_like_audio(args.seconds))
    real = features.log_mel_spectrogram(features.load_audio(AUDIO))
    inputs = {f"music-like {args.seconds:g} s": music, f"{AUDIO.name} ({len(real) / 50:g} s)": real}

    variants: dict[str, dict[str, object]] = {}
    if args.onnx:
        variants[args.onnx.name] = {"path": args.onnx, "file_bytes": args.onnx.stat().st_size}
    else:
        for causal in (True, False):
            model = testing.soundstream_decoder(channels, causal=causal)
            path = args.folder / f"soundstream-c{channels}-{'causal' if causal else 'noncausal'}.onnx"
            testing.write_soundstream_vocoder(path, channels=channels, causal=causal)  # 3 s; never stale
            before, after = model.receptive_field()
            variants["causal" if causal else "non-causal"] = {
                "path": path, "file_bytes": path.stat().st_size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "receptive_field_frames": {"before": before, "after": after},
            }  # fmt: skip
            del model
    results: dict[str, object] = {
        "cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "vocoder": str(args.onnx) if args.onnx else f"SoundStream decoder stand-in, C = {channels}",
        "default_context": MODEL_CONTEXT, "former_context": OLD_CONTEXT, "chunk": CHUNK,
        "exact_relative": EXACT, "load_average_before": os.getloadavg()[0],
    }  # fmt: skip

    print("\nparity: max |streamed - whole| / max |whole|")
    for name, variant in variants.items():
        field = variant.get("receptive_field_frames")
        if field:
            print(f"{name}: {variant['parameters']:,} parameters, {variant['file_bytes'] / 1e6:.1f} MB, "
                  f"receptive field {field['before']} frames before, {field['after']} after")  # fmt: skip
        reach = max(field.values()) if field else None
        contexts = sorted({*args.contexts, *([reach - 1, reach] if reach else [])})
        vocoder = Vocoder(variant["path"], threads=1)
        variant["parity"] = {}
        for label, mel in inputs.items():
            rows = parity(vocoder, mel, contexts)
            variant["parity"][label] = rows
            exact = [r["context"] for r in rows if r["relative"] <= EXACT]
            variant.setdefault("smallest_exact_context", {})[label] = min(exact) if exact else None
            print(
                f"  {label}: " + ", ".join(f"{r['context']}: {r['relative']:.1e}" for r in rows), flush=True
            )
        path = Path(variant["path"]).resolve()
        variant["path"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    results["variants"] = variants

    name, variant = next(iter(variants.items()))
    variant_path = ROOT / variant["path"]
    print(
        f"\nspeed ({name}), one {CHUNK}-frame segment ({CHUNK * HOP_LENGTH / SAMPLE_RATE:g} s) with context"
    )
    speed = []
    segment_seconds = CHUNK * HOP_LENGTH / SAMPLE_RATE
    for threads in args.threads:
        vocoder = Vocoder(variant_path, threads=threads)
        for context in sorted({0, MODEL_CONTEXT, OLD_CONTEXT}):
            start = max(0, min(len(music) - CHUNK - 2 * context, 4 * CHUNK - context))  # inside the song
            wall, cpu_seconds = timed(vocoder, music[start : start + CHUNK + 2 * context], args.repeats)
            row = {"threads": threads, "context": context, "frames": CHUNK + 2 * context, "seconds": wall,
                   "seconds_per_audio_second": wall / segment_seconds, "x_real_time": segment_seconds / wall,
                   "cpu_seconds": cpu_seconds,
                   "cpu_seconds_per_audio_second": cpu_seconds / segment_seconds}  # fmt: skip
            speed.append(row)
            print(f"  {threads} thread(s), context {context:2d} ({row['frames']} frames): {wall:.3f} s, "
                  f"{row['seconds_per_audio_second']:.3f} s per audio second, {row['x_real_time']:.1f}x real "
                  f"time; CPU {cpu_seconds:.3f} s", flush=True)  # fmt: skip
    results["speed"] = speed
    results["load_average_after"] = os.getloadavg()[0]  # other processes' load: it slows wall-clock times
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
