"""Quality against speed: the held-out songs rendered by the measuring model under each sampler setting and
precision, and scored (docs/quality.md).

    .venv/bin/python bench/quality_sweep.py          # the measuring model of bench/measuring_model.py
    .venv/bin/python bench/quality_sweep.py --model DIR --data DATA --quick

For every setting, the first --segments segments (5.12 s each) of every validation song of the dataset are
rendered together (one batch, each song its own seed), and scored against that song's ground truth:

- mel L1: the rendered log-mel against the ground-truth log-mel (the soundfont render's own, from the
  dataset), frames aligned, natural-log units: the sharpest signal a small model gives;
- note F1: basic-pitch's transcription of the render's mel inverted by Griffin-Lim (a model trained here has
  no neural vocoder) against the MIDI's notes; the ground-truth mel through Griffin-Lim is its ceiling;
- seam: the spectral change at the 5.12 s boundaries against elsewhere (1 = no seam);
- decoder passes per segment, and the seconds the sampling took (this machine, side by side in one run).

The authors' recipe (ddpm, 1000 steps, guidance 2) is the reference. A setting "holds up" when, for mel L1
and for note F1, its mean per-song difference from the recipe is within the noise: two standard errors of
that paired difference, or what rendering the default with another seed changes (whichever is larger).
Writes bench/results/quality_sweep.json and docs/images/quality-vs-passes.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

MIDI_DIR = ROOT / "bench/data/nottingham"


@dataclass(frozen=True)
class Setting:
    name: str
    sampler: str
    steps: int
    guidance: float
    interval: str = "full"
    precision: str = "float32"
    seed: int = 0


RECIPE = Setting("authors: ddpm 1000, g 2", "ddpm", 1000, 2.0)
DEFAULT = Setting("unipc 20, g 2 (default)", "unipc", 20, 2.0)
DEFAULT_SEED1 = Setting("unipc 20, g 2 (default, seed 1)", "unipc", 20, 2.0, seed=1)


def settings(quick: bool) -> list[Setting]:
    """The recipe first (every setting is compared with it), then the default with another seed (the
    noise of a render), then the candidates."""
    if quick:
        return [
            Setting("ddpm 200, g 2", "ddpm", 200, 2.0),
            DEFAULT_SEED1,
            DEFAULT,
            Setting("unipc 10, g 2", "unipc", 10, 2.0),
        ]
    out = [
        RECIPE,
        DEFAULT_SEED1,
        DEFAULT,
        Setting("diffusers 100, g 1 (diffusers' default)", "diffusers", 100, 1.0),
    ]
    for steps in (5, 10, 20):
        for guidance in (1.0, 2.0):
            if (steps, guidance) != (20, 2.0):
                out.append(Setting(f"unipc {steps}, g {guidance:g}", "unipc", steps, guidance))
    out += [
        Setting("unipc 40, g 2", "unipc", 40, 2.0),
        Setting("dpmpp-2m 10, g 2", "dpmpp-2m", 10, 2.0),
        Setting("unipc 20, g 2, interval -inf,0", "unipc", 20, 2.0, "-inf,0"),
        Setting("unipc 20, g 2, interval -inf,4", "unipc", 20, 2.0, "-inf,4"),
        Setting("unipc 20, g 2, interval -6,inf", "unipc", 20, 2.0, "-6,inf"),
        Setting("unipc 10, g 2, interval -inf,4", "unipc", 10, 2.0, "-inf,4"),
        Setting("unipc 20, g 2, bfloat16", "unipc", 20, 2.0, precision="bfloat16"),
        Setting("unipc 20, g 2, int8", "unipc", 20, 2.0, precision="int8"),
        Setting("unipc 10, g 2, int8", "unipc", 10, 2.0, precision="int8"),
        # stochastic samplers at fewer passes than the recipe
        Setting("dpmpp-2m-sde 20, g 2", "dpmpp-2m-sde", 20, 2.0),
        Setting("dpmpp-2m-sde 50, g 2", "dpmpp-2m-sde", 50, 2.0),
        Setting("ddpm 50, g 2", "ddpm", 50, 2.0),
        Setting("ddpm 100, g 2", "ddpm", 100, 2.0),
        Setting("ddpm 200, g 2", "ddpm", 200, 2.0),
        Setting("diffusers 100, g 2", "diffusers", 100, 2.0),
        Setting("dpmpp-2m-sde 5, g 2", "dpmpp-2m-sde", 5, 2.0),
        Setting("dpmpp-2m-sde 10, g 2", "dpmpp-2m-sde", 10, 2.0),
        Setting("dpmpp-2m-sde 10, g 1", "dpmpp-2m-sde", 10, 1.0),
        Setting("dpmpp-2m-sde 20, g 1", "dpmpp-2m-sde", 20, 1.0),
        Setting("dpmpp-2m-sde 20, g 2, interval -inf,0", "dpmpp-2m-sde", 20, 2.0, "-inf,0"),
        Setting("dpmpp-2m-sde 20, g 2, int8", "dpmpp-2m-sde", 20, 2.0, precision="int8"),
        Setting("dpmpp-2m-sde 20, g 2, bfloat16", "dpmpp-2m-sde", 20, 2.0, precision="bfloat16"),
        Setting("dpmpp-2m-sde 10, g 2, int8", "dpmpp-2m-sde", 10, 2.0, precision="int8"),
    ]
    return out


def load_songs(data: Path, segments: int):
    from spectrosynth.constants import FRAMES_PER_SEGMENT
    from spectrosynth.data import DatasetReader
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import NoteEvents, fit_segment

    reader = DatasetReader(data)
    songs = []
    for ref in reader.split("validation"):
        song = reader.load(ref)
        events = NoteEvents(song.notes, song.duration)
        count = min(segments, events.num_segments)
        frames = count * FRAMES_PER_SEGMENT
        truth = np.full((frames, song.mel.shape[1]), song.mel.min(), np.float32)
        part = song.mel[:frames]
        truth[: len(part)] = part
        tokens = [fit_segment(j, events.segment(j)).tokens for j in range(count)]
        songs.append(
            {"id": ref.id, "tokens": tokens, "truth": truth, "score": read_midi(MIDI_DIR / song.midi)}
        )
    return songs


def score_mels(songs, mels, vocoder) -> list[dict]:
    from spectrosynth.constants import SAMPLE_RATE
    from spectrosynth.evaluation import mel_l1, note_scores, reference_notes, seam_score, transcribe

    out = []
    for song, mel in zip(songs, mels, strict=True):
        audio = vocoder(mel)
        notes = note_scores(
            reference_notes(song["score"]), transcribe(audio, SAMPLE_RATE), len(audio) / SAMPLE_RATE
        )
        out.append({"mel_l1": mel_l1(mel, song["truth"]), "note_f1": notes.f1, "seam": seam_score(mel)})
    return out


def render(model: Path, songs, s: Setting):
    import torch

    from spectrosynth.pipeline import Synthesizer
    from spectrosynth.sampling import GuidanceInterval, decoder_passes

    synth = Synthesizer.from_pretrained(model, device="cpu", dtype=s.precision, vocoder="griffin-lim")
    tokens = [song["tokens"] for song in songs]
    mels = [[] for _ in songs]
    began = time.perf_counter()
    generators = [torch.Generator().manual_seed(s.seed) for _ in songs]
    for b, _, mel in synth.iter_mel_batch(tokens, s.steps, generators=generators, sampler=s.sampler,
                                          guidance=s.guidance, guidance_interval=s.interval):  # fmt: skip
        mels[b].append(mel)
    seconds = time.perf_counter() - began
    sampler, _ = synth.sampler(s.sampler, s.steps, s.guidance)
    passes = decoder_passes(s.steps, s.guidance, GuidanceInterval.parse(s.interval), sampler)
    segments = sum(len(t) for t in tokens)
    return [np.concatenate(m) for m in mels], passes, seconds / segments, synth.vocoder


def summarise(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None and not math.isnan(r[key])]
    return float(np.mean(values)) if values else None


def paired(a: list[dict], b: list[dict], key: str) -> tuple[float, float]:
    """Mean and standard error of the per-song difference a - b."""
    d = np.array([x[key] - y[key] for x, y in zip(a, b, strict=True)], np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


LABELLED = (
    "authors",
    "(default)",
    "diffusers 100, g 1",
    "dpmpp-2m-sde 20, g 1",
    "dpmpp-2m-sde 10, g 2",
    "unipc 5",
)


def plot(results: list[dict], path: Path) -> None:
    """Quality against decoder passes: deterministic solvers in blue, stochastic samplers in red; the
    marker is the precision (circle float32, triangle bfloat16, square int8), hollow with a guidance
    interval; the authors' recipe a star. Only a few points are named, the rest are in the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectrosynth.sampling import STOCHASTIC

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (
        (axes[0], "mel_l1", "mel L1 to the ground truth (lower is better)"),
        (axes[1], "note_f1", "note F1 through Griffin-Lim (higher is better)"),
    )
    for ax, key, label in panels:
        for r in results:
            colour = "tab:red" if r["sampler"] in STOCHASTIC else "tab:blue"
            marker = (
                "*"
                if r["name"].startswith("authors")
                else {"float32": "o", "bfloat16": "^", "int8": "s"}[r["precision"]]
            )
            face = "none" if r["interval"] != "full" else colour
            ax.scatter(r["passes"], r[key], marker=marker, s=150 if marker == "*" else 40, edgecolors=colour,
                       facecolors=face, alpha=0.8)  # fmt: skip
            if any(tag in r["name"] for tag in LABELLED) and "seed 1" not in r["name"]:
                ax.annotate(
                    r["name"], (r["passes"], r[key]), fontsize=7, xytext=(4, 4), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.set_xlabel("decoder passes per 5.12 s segment")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    title = (
        "The measuring model on its held-out songs. Blue: deterministic solvers (unipc, dpmpp-2m); "
        "red: stochastic (ddpm, diffusers, dpmpp-2m-sde).\nCircle float32, triangle bfloat16, square int8; "
        "hollow: a guidance interval; star: the authors' recipe"
    )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "build/measure/latest")
    parser.add_argument("--data", type=Path, default=ROOT / "build/measure/data")
    parser.add_argument("--segments", type=int, default=2, help="segments per song (5.12 s each)")
    parser.add_argument("--quick", action="store_true", help="four settings, to try the script")
    parser.add_argument("--fresh", action="store_true", help="measure every setting again")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out's results")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/quality_sweep.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/images/quality-vs-passes.png")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text())["results"], args.plot)
        return
    import torch

    from spectrosynth.griffin_lim import GriffinLimVocoder

    songs = load_songs(args.data, args.segments)
    print(f"{len(songs)} held-out songs, {sum(len(s['tokens']) for s in songs)} segments", flush=True)
    truth = score_mels(songs, [s["truth"] for s in songs], GriffinLimVocoder())
    # Settings measured before on the same model and songs are taken from the last results (--fresh: not).
    earlier = {}
    if args.out.exists() and not args.fresh:
        last = json.loads(args.out.read_text())
        if last.get("model") == str(args.model) and last.get("segments_per_song") == args.segments:
            earlier = {
                json.dumps({k: r[k] for k in Setting.__dataclass_fields__}): r for r in last["results"]
            }
    results = []
    for s in settings(args.quick):
        if (kept := earlier.get(json.dumps(s.__dict__))) is not None:
            results.append(kept)
            print(f"{s.name:42s} (measured before)", flush=True)
            continue
        mels, passes, seconds, vocoder = render(args.model, songs, s)
        rows = score_mels(songs, mels, vocoder)
        means = {k: summarise(rows, k) for k in ("mel_l1", "note_f1", "seam")}
        result = {**s.__dict__, "passes": passes, "seconds_per_segment": seconds, **means, "songs": rows}
        results.append(result)
        shown = {k: "-" if v is None else f"{v:.3f}" for k, v in means.items()}
        print(f"{s.name:42s} passes {passes:5d}  {seconds:6.2f} s/segment  mel L1 {shown['mel_l1']}  "
              f"F1 {shown['note_f1']}  seam {shown['seam']}", flush=True)  # fmt: skip
    reference, seed1, default = results[0], results[1], results[2]
    for r in results:
        for key in ("mel_l1", "note_f1"):
            mean, se = paired(r["songs"], reference["songs"], key)
            seed_mean, seed_se = paired(seed1["songs"], default["songs"], key)
            r[f"{key}_vs_recipe"] = mean
            r[f"{key}_vs_recipe_se"] = se
            # the noise: two standard errors of the paired difference, or what another seed alone changes
            r[f"{key}_noise"] = max(2 * se, abs(seed_mean) + 2 * seed_se)
        r["holds_up"] = all(abs(r[f"{k}_vs_recipe"]) <= r[f"{k}_noise"] for k in ("mel_l1", "note_f1"))
    summary = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": str(args.model),
        "songs": [s["id"] for s in songs],
        "segments_per_song": args.segments,
        "ground_truth_through_griffin_lim": {k: summarise(truth, k) for k in ("note_f1", "seam")},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    for r in results:
        print(
            f"{r['name']:42s} holds up: {r['holds_up']}  d mel {r['mel_l1_vs_recipe']:+.3f} "
            f"(noise {r['mel_l1_noise']:.3f})  d F1 {r['note_f1_vs_recipe']:+.3f} "
            f"(noise {r['note_f1_noise']:.3f})"
        )


if __name__ == "__main__":
    main()
