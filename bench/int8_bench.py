"""int8 against float32 and bfloat16 on the published sizes: speed per decoder pass and the deviation it
brings, per pass and per render (docs/performance.md#int8).

    .venv/bin/python bench/int8_bench.py --checkpoint /tmp/spectrosynth-base-random

With the random checkpoint in the published base sizes: one guided decoder pass (a batch of the conditional
and the unconditional row, 256 frames, the cross-attention keys of a real segment) timed in each precision,
interleaved, the median of --repeats; its output against float32's (relative L2 and max |difference|); and
a whole render of the first --segments segments of example_complex.mid with the default sampler, whose
log-mel spectrogram is compared with float32's. Also the load time of each precision, cold (converting)
and warm (from the converted copy of spectrosynth.converted). Writes bench/results/int8_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

SONG = ROOT / "tests/data/midi/note-seq/example_complex.mid"
PRECISIONS = ("float32", "bfloat16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path(tempfile.gettempdir()) / "spectrosynth-base-random"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/int8_bench.json")
    args = parser.parse_args()
    import os

    os.environ["SPECTROSYNTH_CACHE"] = tempfile.mkdtemp(prefix="spectrosynth-int8-bench-")
    import torch

    from spectrosynth.midi import read_midi
    from spectrosynth.pipeline import FilmCache, Synthesizer
    from spectrosynth.testing import write_checkpoint
    from spectrosynth.tokens import prepare

    if not (args.checkpoint / "model_index.json").exists():
        write_checkpoint(args.checkpoint, "base", weights_format="safetensors")
    segments = [s.tokens for s in prepare(read_midi(SONG)).segments[: args.segments]]
    synths, loads = {}, {}
    for precision in PRECISIONS:
        times = []
        for _ in range(2):  # cold (converts and keeps the copy), then warm
            began = time.perf_counter()
            synths[precision] = Synthesizer.from_pretrained(args.checkpoint, device="cpu", dtype=precision)
            times.append(time.perf_counter() - began)
        loads[precision] = {"cold_s": times[0], "warm_s": times[1]}
        print(f"load {precision}: cold {times[0]:.2f} s, warm {times[1]:.2f} s", flush=True)

    # One guided pass, the same inputs for every precision: segment 2 with segment 1's render as context.
    context = synths["float32"].generate_mel(segments[:1], steps=2, seed=0)
    z = torch.randn(1, 256, 128, generator=torch.Generator().manual_seed(1))
    passes, outputs = {}, {}
    with torch.inference_mode():
        prepared = {}
        for precision, synth in synths.items():
            kvs, mask = synth._encode([segments[1]], [torch.as_tensor(context)[None]])
            films = FilmCache(synth.decoder, synth.device)(0.5)
            prepared[precision] = (synth, kvs, mask, films)
        samples = {p: [] for p in PRECISIONS}
        for _ in range(args.repeats + 1):
            for precision, (synth, kvs, mask, films) in prepared.items():
                began = time.perf_counter()
                out = synth.decoder(z.to(synth.dtype), films, kvs, mask, unconditional=True)
                samples[precision].append(time.perf_counter() - began)
                outputs[precision] = out.float()
    reference = outputs["float32"]
    for precision in PRECISIONS:
        diff = outputs[precision] - reference
        passes[precision] = {
            "guided_pass_s": statistics.median(samples[precision][1:]),
            "relative_l2": float(diff.norm() / reference.norm()),
            "max_abs": float(diff.abs().max()),
        }
        print(f"pass {precision}: {passes[precision]}", flush=True)

    renders = {}
    mels = {}
    for precision, synth in synths.items():
        began = time.perf_counter()
        mels[precision] = synth.generate_mel(segments, seed=0)
        renders[precision] = {"seconds_per_segment": (time.perf_counter() - began) / len(segments)}
    for precision in PRECISIONS:
        diff = np.abs(mels[precision] - mels["float32"])
        renders[precision].update(mel_max_abs=float(diff.max()), mel_mean_abs=float(diff.mean()))
        print(f"render {precision}: {renders[precision]}", flush=True)
    summary = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "int8_engine": torch.backends.quantized.engine,
        "checkpoint": "random, published base sizes",
        "song": SONG.name,
        "load": loads,
        "guided_pass": passes,
        "render": renders,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
