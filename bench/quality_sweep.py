"""Quality against speed on the measuring model, on two song sets, at checkpoints along its training
(docs/quality.md).

    .venv/bin/python bench/quality_sweep.py --step 4000            # the run's checkpoint 4000 (EMA weights)
    .venv/bin/python bench/quality_sweep.py --step 4000 --weights raw --settings core
    .venv/bin/python bench/quality_sweep.py --model DIR --label mine  # any model in the published layout
    .venv/bin/python bench/quality_sweep.py --plot-only              # redraw the figures from the results

For every setting, the first --segments segments (5.12 s each) of each song of both sets are rendered
together (one batch, each song its own seed) and scored against that song's ground truth:

- the sets: `train`, songs the network was trained on (in-distribution: where a network that has learned
  its data renders, as the published model renders its users' MIDI), and `heldout`, songs it never saw;
- mel L1: the rendered log-mel against the ground truth's (the soundfont render's own), natural-log units;
- note F1: basic-pitch's transcription of the render's mel inverted by Griffin-Lim, against the MIDI's notes
  (the ground truth's own mel through Griffin-Lim is the ceiling);
- seam: the spectral change at the 5.12 s boundary against elsewhere (1 = none);
- saturation: the share of the rendered log-mel's bins at the floor (ln 1e-5, silence) and at the ceiling
  (4.0): the solvers clip the data prediction to [-1, 1], and a weak network's predictions pile up there;
- decoder passes per segment, and the seconds the sampling took (this machine, one run).

The authors' recipe (ddpm, 1000 steps, guidance 2) is the reference; each setting's paired difference from it
(per song) and the noise (two standard errors of that difference, or what another seed changes in the
default, whichever is larger) decide whether it "holds up" (docs/quality.md, the rule). Results accumulate
in bench/results/quality_trend.json under the model's label (settings measured before are kept; --fresh
measures again); figures: docs/images/quality-trend.png, docs/images/spectrograms.png (--pictures).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_bench import cpu_flags  # noqa: E402

MIDI_DIR = ROOT / "bench/data/nottingham"
RESULTS = ROOT / "bench/results/quality_trend.json"
SETS = ("train", "heldout")
LATER_START = -2.0  # the log-SNR a "later start" grid begins at (the default begins at -10.2)
THRESHOLD = (0.995, 1.5)  # dynamic thresholding's ratio and max value (diffusers' form, with a cap)


@dataclass(frozen=True)
class Setting:
    name: str
    sampler: str
    steps: int
    guidance: float
    interval: str = "full"
    precision: str = "float32"
    seed: int = 0
    threshold: str = ""  # "ratio,max": dynamic thresholding instead of the clip
    start_logsnr: float | None = None  # the solver grid's first log-SNR (None: the default -10.2)

    def sampler_options(self) -> dict:
        from spectrosynth.sampling.schedule import time_at

        options = {}
        if self.threshold:
            ratio, top = (float(v) for v in self.threshold.split(","))
            options["threshold"] = (ratio, top)
        if self.start_logsnr is not None:
            options["t_start"] = time_at(self.start_logsnr)
        return options

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


RECIPE = Setting("authors: ddpm 1000, g 2", "ddpm", 1000, 2.0)
DEFAULT = Setting("unipc 20, g 2 (default)", "unipc", 20, 2.0)
DEFAULT_SEED1 = Setting("unipc 20, g 2 (default, seed 1)", "unipc", 20, 2.0, seed=1)
SDE20 = Setting("dpmpp-2m-sde 20, g 2", "dpmpp-2m-sde", 20, 2.0)
THRESHOLDED = f"{THRESHOLD[0]},{THRESHOLD[1]}"
UNCAPPED = f"{THRESHOLD[0]},inf"  # Imagen's own form: s is not capped


def settings(which: str) -> list[Setting]:
    """The recipe first (every setting is compared with it), then the default with another seed (the noise
    of a render), then the candidates. `core`: the recipe, the default and SDE 20 (raw against EMA, the
    cool-down); `trend`: the reduced sweep run at every checkpoint; `quick`: to try the script."""
    if which == "quick":
        return [Setting("ddpm 100, g 2", "ddpm", 100, 2.0), DEFAULT_SEED1, DEFAULT, SDE20]
    if which == "core":
        return [RECIPE, DEFAULT_SEED1, DEFAULT, SDE20]
    out = [RECIPE, DEFAULT_SEED1, DEFAULT]
    out += [Setting(f"unipc {n}, g 2", "unipc", n, 2.0) for n in (10, 40)]
    out += [Setting("unipc 20, g 1", "unipc", 20, 1.0)]
    out += [Setting(f"dpmpp-2m-sde {n}, g 2", "dpmpp-2m-sde", n, 2.0) for n in (10, 20, 30)]
    out += [Setting("dpmpp-2m-sde 20, g 1", "dpmpp-2m-sde", 20, 1.0)]
    out += [
        Setting("unipc 20, g 2, interval -inf,0", "unipc", 20, 2.0, "-inf,0"),
        Setting("dpmpp-2m-sde 20, g 2, interval -inf,0", "dpmpp-2m-sde", 20, 2.0, "-inf,0"),
        Setting("unipc 20, g 2, bfloat16", "unipc", 20, 2.0, precision="bfloat16"),
        Setting("dpmpp-2m-sde 20, g 2, bfloat16", "dpmpp-2m-sde", 20, 2.0, precision="bfloat16"),
        Setting("unipc 20, g 2, int8", "unipc", 20, 2.0, precision="int8"),
        Setting("dpmpp-2m-sde 20, g 2, int8", "dpmpp-2m-sde", 20, 2.0, precision="int8"),
        Setting("unipc 20, g 2, dynamic threshold", "unipc", 20, 2.0, threshold=THRESHOLDED),
        Setting("unipc 20, g 2, dynamic threshold, no cap", "unipc", 20, 2.0, threshold=UNCAPPED),
        Setting("unipc 20, g 2, later start", "unipc", 20, 2.0, start_logsnr=LATER_START),
        Setting("dpmpp-2m-sde 20, g 2, dynamic threshold", "dpmpp-2m-sde", 20, 2.0, threshold=THRESHOLDED),
    ]
    return out


def pick(refs, count: int):
    """`count` songs spread evenly over a split sorted by name (the same ones every time)."""
    refs = sorted(refs, key=lambda r: r.id)
    if count >= len(refs):
        return refs
    return [refs[round(i * (len(refs) - 1) / (count - 1))] for i in range(count)] if count > 1 else refs[:1]


def load_songs(data: Path, segments: int, per_set: int, midi: Path = MIDI_DIR) -> dict[str, list[dict]]:
    from spectrosynth.constants import FRAMES_PER_SEGMENT
    from spectrosynth.data import DatasetReader
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import NoteEvents, fit_segment

    reader = DatasetReader(data)
    out = {}
    for name, split in (("train", "train"), ("heldout", "validation")):
        songs = []
        for ref in pick(reader.split(split), per_set):
            song = reader.load(ref)
            events = NoteEvents(song.notes, song.duration)
            count = min(segments, events.num_segments)
            frames = count * FRAMES_PER_SEGMENT
            truth = np.full((frames, song.mel.shape[1]), song.mel.min(), np.float32)
            part = song.mel[:frames]
            truth[: len(part)] = part
            tokens = [fit_segment(j, events.segment(j)).tokens for j in range(count)]
            songs.append(
                {"id": ref.id, "tokens": tokens, "truth": truth, "score": read_midi(midi / song.midi)}
            )
        out[name] = songs
    return out


def saturation(mel: np.ndarray) -> tuple[float, float]:
    """Shares of a log-mel's bins at the floor (silence) and at the ceiling of the model's range."""
    from spectrosynth.constants import MAX_LOG_MEL, MIN_LOG_MEL

    return float((mel <= MIN_LOG_MEL + 1e-3).mean()), float((mel >= MAX_LOG_MEL - 1e-3).mean())


def score_mels(songs, mels, vocoder) -> list[dict]:
    from spectrosynth.constants import SAMPLE_RATE
    from spectrosynth.evaluation import mel_l1, note_scores, reference_notes, seam_score, transcribe

    out = []
    for song, mel in zip(songs, mels, strict=True):
        audio = vocoder(mel)
        notes = note_scores(
            reference_notes(song["score"]), transcribe(audio, SAMPLE_RATE), len(audio) / SAMPLE_RATE
        )
        floor, ceiling = saturation(mel)
        out.append({"mel_l1": mel_l1(mel, song["truth"]), "note_f1": notes.f1, "seam": seam_score(mel),
                    "floor": floor, "ceiling": ceiling})  # fmt: skip
    return out


def render(model: Path, songs, s: Setting, device: str = "cpu"):
    import torch

    from spectrosynth.pipeline import Synthesizer
    from spectrosynth.sampling import GuidanceInterval, decoder_passes

    synth = Synthesizer.from_pretrained(model, device=device, dtype=s.precision, vocoder="griffin-lim")
    tokens = [song["tokens"] for song in songs]
    mels = [[] for _ in songs]
    began = time.perf_counter()
    generators = [torch.Generator().manual_seed(s.seed) for _ in songs]
    for b, _, mel in synth.iter_mel_batch(tokens, s.steps, generators=generators, sampler=s.sampler,
                                          guidance=s.guidance, guidance_interval=s.interval,
                                          sampler_options=s.sampler_options()):  # fmt: skip
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
    d = np.array([(x[key] or 0.0) - (y[key] or 0.0) for x, y in zip(a, b, strict=True)], np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def compare(results: list[dict]) -> None:
    """Each result's paired difference from the recipe, the noise, and whether it holds up (in place)."""
    by_name = {r["name"]: r for r in results}
    reference = by_name.get(RECIPE.name) or results[0]
    seed1, default = by_name.get(DEFAULT_SEED1.name), by_name.get(DEFAULT.name)
    for r in results:
        for key in ("mel_l1", "note_f1"):
            mean, se = paired(r["songs"], reference["songs"], key)
            seed_mean, seed_se = (
                paired(seed1["songs"], default["songs"], key) if seed1 and default else (0, 0)
            )
            r[f"{key}_vs_recipe"] = mean
            r[f"{key}_vs_recipe_se"] = se
            r[f"{key}_noise"] = max(2 * se, abs(seed_mean) + 2 * seed_se)
        r["holds_up"] = all(abs(r[f"{k}_vs_recipe"]) <= r[f"{k}_noise"] for k in ("mel_l1", "note_f1"))


def export_checkpoint(run: Path, step: int, which: str, out: Path) -> Path:
    """Checkpoint `step` of a training run as a model folder in the published layout (no vocoder): its
    weight average (`ema`) or its raw weights."""
    from safetensors.torch import load_file

    from spectrosynth.training.model import new_networks, save_published, size_configs

    options = json.loads((run / "run.json").read_text())
    folder = run / "checkpoints" / f"step-{step:08d}"
    if not folder.is_dir():
        sys.exit(f"{folder} does not exist: the run keeps {sorted(p.name for p in folder.parent.iterdir())}")
    configs = size_configs(options["config"] or "mini")
    nets = new_networks(configs, 0)
    names = {"notes_encoder": "notes_encoder", "context_encoder": "continuous_encoder", "decoder": "decoder"}
    tensors = load_file(folder / "weights.safetensors")
    if which == "ema":
        tensors.update(load_file(folder / "ema.safetensors"))
    for key, tensor in tensors.items():
        prefix, _, name = key.partition(".")
        nets[names[prefix]].get_parameter(name).data.copy_(tensor)
    if out.exists() and (out / ".source.json").exists():
        if json.loads((out / ".source.json").read_text()) == {
            "run": str(run),
            "step": step,
            "weights": which,
        }:
            return out
    save_published(out, nets, configs, None)
    (out / ".source.json").write_text(json.dumps({"run": str(run), "step": step, "weights": which}))
    return out


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def save_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.tmp")
    part.write_text(json.dumps(data, indent=1) + "\n")
    part.replace(path)


def merge_results(path: Path, label: str, entry: dict, extra: dict) -> None:
    """Write one model's entry into the results file, read again under a lock, so that sweeps of other
    models running at the same time (one per core) keep theirs."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_results(path)
        data["models"][label] = entry
        data.update(extra)
        save_results(path, data)


def sweep(model: Path, label: str, meta: dict, args) -> None:
    from spectrosynth.griffin_lim import GriffinLimVocoder

    songs = load_songs(args.data, args.segments, args.songs, args.midi)
    data = load_results(args.out)
    data.setdefault("songs", {k: [s["id"] for s in v] for k, v in songs.items()})
    data["segments_per_song"] = args.segments
    if "truth" not in data:
        data["truth"] = {}
        for name, group in songs.items():
            rows = score_mels(group, [s["truth"] for s in group], GriffinLimVocoder())
            data["truth"][name] = {k: summarise(rows, k) for k in ("note_f1", "seam", "floor", "ceiling")}
    entry = data["models"].setdefault(label, {**meta, "results": {name: [] for name in SETS}})
    entry.update(meta)
    for s in settings(args.settings):
        for name in SETS:
            results = entry["results"][name]
            known = [i for i, r in enumerate(results) if r["key"] == s.key]
            if known and not args.fresh:
                continue
            mels, passes, seconds, vocoder = render(model, songs[name], s, args.device)
            rows = score_mels(songs[name], mels, vocoder)
            means = {k: summarise(rows, k) for k in ("mel_l1", "note_f1", "seam", "floor", "ceiling")}
            result = {**asdict(s), "key": s.key, "passes": passes, "seconds_per_segment": seconds, **means,
                      "songs": rows}  # fmt: skip
            if known:
                results[known[0]] = result
            else:
                results.append(result)
            compare(results)
            shared = {k: data[k] for k in ("songs", "segments_per_song", "truth")}
            merge_results(args.out, label, entry, {**shared, "cpu": cpu_flags(), "torch": _torch_version()})
            shown = {k: "-" if v is None else f"{v:.3f}" for k, v in means.items()}
            print(f"{label} {name:7s} {s.name:42s} passes {passes:5d} {seconds:6.2f} s/seg  mel L1 "
                  f"{shown['mel_l1']}  F1 {shown['note_f1']}  seam {shown['seam']}  floor {shown['floor']}  "
                  f"ceiling {shown['ceiling']}", flush=True)  # fmt: skip


def _torch_version() -> str:
    import torch

    return torch.__version__


# ---------------------------------------------------------------------------------------------------------
# Figures


def trend_rows(data: dict, weights: str = "ema", run: str = "main") -> list[tuple[int, dict]]:
    """The main run's checkpoints of `weights`, by step."""
    rows = [
        (m["step"], m) for m in data["models"].values() if m.get("weights") == weights and m.get("run") == run
    ]
    return sorted(rows, key=lambda r: r[0])


# ---------------------------------------------------------------------------------------------------------
# The rule (docs/quality.md, "The rule that decides the defaults"), as code


def best_model(data: dict) -> str:
    """The label of the swept model whose recipe renders score the lowest mel L1 on the `train` set."""
    scored = []
    for label, model in data["models"].items():
        recipe = [r for r in model["results"]["train"] if r["name"] == RECIPE.name]
        if recipe:
            scored.append((recipe[0]["mel_l1"], label))
    return min(scored)[1]


def before(data: dict, label: str) -> str | None:
    """The trend checkpoint at half the best model's steps, or the nearest below it."""
    step = data["models"][label]["step"]
    earlier = [(s, m) for s, m in trend_rows(data) if s <= step // 2]
    if not earlier:
        return None
    chosen = earlier[-1][0]
    return next(k for k, m in data["models"].items() if m.get("run") == "main" and m.get("weights") == "ema"
                and m["step"] == chosen)  # fmt: skip


def bar(data: dict, label: str, name: str = "train") -> dict:
    """Whether the model's recipe renders meet the bar on a set: mel L1 <= 2 and note F1 at least half the
    ground truth's through Griffin-Lim."""
    recipe = next(r for r in data["models"][label]["results"][name] if r["name"] == RECIPE.name)
    ceiling = data["truth"][name]["note_f1"]
    return {"mel_l1": recipe["mel_l1"], "note_f1": recipe["note_f1"], "truth_note_f1": ceiling,
            "met": recipe["mel_l1"] <= 2.0 and recipe["note_f1"] >= 0.5 * ceiling}  # fmt: skip


def eligibility(data: dict, label: str) -> dict[str, dict]:
    """Every swept setting of the best model: on each set whether it holds up and whether its gap did not
    grow since the checkpoint before; eligible when both hold on both sets."""
    previous = before(data, label)
    out = {}
    results = data["models"][label]["results"]
    for r in results["train"]:
        verdict = {"passes": r["passes"], "sets": {}}
        for name in SETS:
            here = next((x for x in results[name] if x["key"] == r["key"]), None)
            if here is None:
                continue
            holds = here["mel_l1_vs_recipe"] <= here["mel_l1_noise"] and (
                -here["note_f1_vs_recipe"] <= here["note_f1_noise"]
            )
            grew = None
            if previous is not None:
                then = next(
                    (x for x in data["models"][previous]["results"][name] if x["key"] == r["key"]), None
                )
                if then is not None:
                    grew = here["mel_l1_vs_recipe"] > then["mel_l1_vs_recipe"] + here["mel_l1_noise"]
            gap, noise = here["mel_l1_vs_recipe"], here["mel_l1_noise"]
            verdict["sets"][name] = {"holds_up": holds, "gap_grew": grew, "gap": gap, "noise": noise}
        sets = verdict["sets"]
        verdict["eligible"] = len(sets) == len(SETS) and all(
            v["holds_up"] and v["gap_grew"] is False for v in sets.values()
        )
        out[r["name"]] = verdict
    return out


def decide(data: dict) -> dict:
    """The rule applied: the best model, the bar, each setting's eligibility and the defaults it gives."""
    label = best_model(data)
    verdicts = eligibility(data, label)
    settings_by_name = {s.name: s for s in settings("trend")}
    met, heldout = bar(data, label, "train"), bar(data, label, "heldout")
    decision = {"best": label, "before": before(data, label), "bar_train": met, "bar_heldout": heldout,
                "verdicts": verdicts}  # fmt: skip
    if not met["met"]:
        decision["defaults"] = "unchanged: the measuring model does not meet the bar"
        return decision

    def candidates(guidance: float | None) -> list[tuple[int, float, str]]:
        found = []
        for name, v in verdicts.items():
            s = settings_by_name.get(name)
            if s is None or s == RECIPE or not v["eligible"] or s.precision != "float32" or s.seed != 0:
                continue
            if guidance is not None and s.guidance != guidance:
                continue
            found.append((v["passes"], v["sets"]["train"]["gap"], name))
        return sorted(found)

    guided = candidates(2.0)
    chosen = guided[0][2] if guided else DEFAULT.name
    if heldout["met"]:  # only then may guidance 1 compete
        every = candidates(None)
        chosen = every[0][2] if every else chosen
    s = settings_by_name[chosen]
    variant = {}
    for precision in ("bfloat16", "int8"):
        nearest = "unipc" if s.sampler == "unipc" else "dpmpp-2m-sde"
        match = [n for n, x in settings_by_name.items() if x.precision == precision and x.sampler == nearest]
        variant[precision] = bool(match) and verdicts.get(match[0], {}).get("eligible", False)
    decision["defaults"] = {
        "setting": chosen,
        "eligible_guided": [c[2] for c in guided],
        "cpu_without_fast_bfloat16": "int8" if variant["int8"] else "float32",
        "cpu_with_fast_bfloat16": "bfloat16" if variant["bfloat16"] else "(the float32 rule)",
    }
    return decision


def report(data: dict) -> str:
    """Markdown tables for docs/quality.md: the recipe along training, the core settings of every model, and
    the best model's sweep on both sets with the rule's verdicts."""

    def f(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    header = "| step | train: mel L1 | train: note F1 | held-out: mel L1 | held-out: note F1 |"
    lines = ["### The recipe along training (EMA weights)", "", header, "|---|---|---|---|---|"]
    for step, model in trend_rows(data):
        cells = []
        for name in SETS:
            r = next((x for x in model["results"][name] if x["name"] == RECIPE.name), None)
            cells += [f(r and r["mel_l1"]), f(r and r["note_f1"], 3)]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "### Every model, core settings (mel L1, train / held-out)", "",
              "| model | " + " | ".join(s.name for s in settings("core") if s != DEFAULT_SEED1) + " |",
              "|---|" + "---|" * (len(settings("core")) - 1)]  # fmt: skip
    for label, model in sorted(data["models"].items(), key=lambda kv: (kv[1].get("step") or 0, kv[0])):
        cells = []
        for s in settings("core"):
            if s == DEFAULT_SEED1:
                continue
            pair = [
                next((x["mel_l1"] for x in model["results"][n] if x["name"] == s.name), None) for n in SETS
            ]
            cells.append(" / ".join(f(v) for v in pair))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = best_model(data)
    verdicts = eligibility(data, best)
    for name in SETS:
        title = {"train": "songs it trained on", "heldout": "held-out songs"}[name]
        lines += ["", f"### {best}, {title} (ground truth through Griffin-Lim: note F1 "
                  f"{f(data['truth'][name]['note_f1'], 3)})", "",
                  "| setting | passes | s/segment | mel L1 | gap ± noise | note F1 | F1 gap ± noise | seam | "
                  "floor | ceiling | holds up | gap grew | eligible |", "|---|" + "---|" * 12]  # fmt: skip
        for r in data["models"][best]["results"][name]:
            v = verdicts.get(r["name"], {})
            here = v.get("sets", {}).get(name, {})
            lines.append(
                f"| {r['name']} | {r['passes']} | {f(r['seconds_per_segment'])} | {f(r['mel_l1'])} | "
                f"{r['mel_l1_vs_recipe']:+.2f} ± {r['mel_l1_noise']:.2f} | {f(r['note_f1'], 3)} | "
                f"{-r['note_f1_vs_recipe']:+.3f} ± {r['note_f1_noise']:.3f} | {f(r['seam'])} | "
                f"{100 * r['floor']:.0f} % | {100 * r['ceiling']:.0f} % | "
                f"{'yes' if here.get('holds_up') else 'no'} | "
                f"{ {True: 'yes', False: 'no', None: '-'}[here.get('gap_grew')] } | "
                f"{'**yes**' if v.get('eligible') else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def plot_trend(data: dict, path: Path) -> None:
    """Each setting's mel-L1 gap to the recipe against the recipe's own mel L1, one line per setting (one
    point per checkpoint): which way each gap moves as the network gets better (to the right). Columns: the
    two song sets; rows: the deterministic solvers (UniPC) and the stochastic ones (SDE-DPM-Solver++)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = trend_rows(data)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5), sharex="col")
    names = [s.name for s in settings("trend")[1:] if s.name != DEFAULT_SEED1.name]
    families = (("deterministic: unipc", [n for n in names if n.startswith("unipc")]),
                ("stochastic: dpmpp-2m-sde", [n for n in names if n.startswith("dpmpp-2m-sde")]))  # fmt: skip
    for col, name in enumerate(SETS):
        for row, (family, members) in enumerate(families):
            ax = axes[row, col]
            cmap = plt.get_cmap("tab10")
            for i, setting in enumerate(members):
                xs, ys, steps = [], [], []
                for step, model in rows:
                    results = {r["name"]: r for r in model["results"][name]}
                    if RECIPE.name in results and setting in results:
                        xs.append(results[RECIPE.name]["mel_l1"])
                        ys.append(results[setting]["mel_l1_vs_recipe"])
                        steps.append(step)
                if not xs:
                    continue
                precision = "bfloat16" in setting or "int8" in setting
                style = ":" if precision else ("--" if "threshold" in setting or "start" in setting else "-")
                ax.plot(xs, ys, style, marker="o", ms=3, color=cmap(i % 10), label=setting, lw=1.3)
                ax.annotate(
                    str(steps[-1]), (xs[-1], ys[-1]), fontsize=6, xytext=(3, 2), textcoords="offset points"
                )
            ax.axhline(0, color="black", lw=0.8)
            ax.axvline(2.0, color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
            title = {"train": "songs it trained on (in-distribution)", "heldout": "held-out songs"}[name]
            ax.set_title(f"{title}: {family}", fontsize=9)
            if col == 0:
                ax.set_ylabel("mel L1 gap to the recipe (setting - recipe)")
            if col == 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[1, col].set_xlabel("the recipe's own mel L1 to the ground truth (right: a better network)")
        axes[1, col].invert_xaxis()
    fig.suptitle("The measuring model along its training: each setting's mel-L1 gap to the authors' recipe, "
                 "one point per checkpoint (EMA weights), the last labelled with its step; dotted: the bar",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pictures(model: Path, label: str, args) -> None:
    """Log-mel spectrograms of one song of each set: ground truth, the recipe, the default, SDE 20."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectrosynth.constants import MAX_LOG_MEL, MIN_LOG_MEL

    songs = load_songs(args.data, args.segments, args.songs, args.midi)
    chosen = {name: [s for s in group if s["id"] == args.picture_song.get(name)] or group[:1]
              for name, group in songs.items()}  # fmt: skip
    panels = [("ground truth", None), ("authors' recipe: ddpm 1000, g 2", RECIPE),
              ("default: unipc 20, g 2", DEFAULT), ("dpmpp-2m-sde 20, g 2", SDE20)]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 9), sharex=True)
    for col, name in enumerate(SETS):
        song = chosen[name][0]
        for row, (title, s) in enumerate(panels):
            mel = song["truth"] if s is None else render(model, [song], s, args.device)[0][0]
            ax = axes[row, col]
            ax.imshow(mel.T, origin="lower", aspect="auto", vmin=MIN_LOG_MEL, vmax=MAX_LOG_MEL, cmap="magma",
                      extent=(0, len(mel) / 50, 0, mel.shape[1]), interpolation="nearest")  # fmt: skip
            l1 = "" if s is None else f"  (mel L1 {float(np.abs(mel - song['truth']).mean()):.2f})"
            ax.set_title(f"{name}: {song['id']} - {title}{l1}", fontsize=8)
            ax.set_ylabel("mel band")
        axes[-1, col].set_xlabel("seconds")
    fig.suptitle(f"Log-mel spectrograms of the measuring model ({label}); colour from the floor (ln 1e-5, "
                 "black) "
                 "to the ceiling (4.0, white)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    args.pictures_out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.pictures_out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "build/measure/run", help="the training run")
    parser.add_argument("--step", type=int, help="measure this checkpoint of --run")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument("--model", type=Path, help="or measure this model folder (give --label)")
    parser.add_argument("--label", help="the results' name for it (default: step-N[-raw])")
    parser.add_argument(
        "--run-name", default="main", help="which run the checkpoint belongs to (for the trend)"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "build/measure/data")
    parser.add_argument("--midi", type=Path, default=MIDI_DIR, help="the dataset's MIDI files")
    parser.add_argument("--segments", type=int, default=2, help="segments per song (5.12 s each)")
    parser.add_argument("--songs", type=int, default=6, help="songs per set")
    parser.add_argument("--settings", choices=("trend", "core", "quick"), default="trend")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (the timings are this device's)")
    parser.add_argument("--fresh", action="store_true", help="measure settings measured before again")
    parser.add_argument("--plot-only", action="store_true", help="redraw the trend plot from --out")
    parser.add_argument("--pictures", action="store_true", help="draw the spectrograms of the model instead")
    parser.add_argument(
        "--decide", action="store_true", help="apply the rule to --out's results and print it"
    )
    parser.add_argument("--report", action="store_true", help="print --out's results as markdown tables")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/images/quality-trend.png")
    parser.add_argument("--pictures-out", type=Path, default=ROOT / "docs/images/spectrograms.png")
    args = parser.parse_args()
    args.picture_song = {}
    if args.plot_only:
        plot_trend(load_results(args.out), args.plot)
        return
    if args.decide:
        print(json.dumps(decide(load_results(args.out)), indent=1))
        return
    if args.report:
        print(report(load_results(args.out)))
        return
    if args.model is None:
        if args.step is None:
            parser.error("give --step N (a checkpoint of --run) or --model DIR")
        label = args.label or f"step-{args.step}" + ("" if args.weights == "ema" else "-raw")
        if args.run_name != "main":
            label = args.label or f"{args.run_name}-step-{args.step}"
        models = args.run.parent / "models"
        model = export_checkpoint(args.run, args.step, args.weights, models / label)
        meta = {"step": args.step, "weights": args.weights, "run": args.run_name}
    else:
        model, label = args.model, args.label or args.model.name
        meta = {"step": None, "weights": "given", "run": args.run_name, "model": str(args.model)}
    if args.pictures:
        pictures(model, label, args)
        return
    sweep(model, label, meta, args)
    plot_trend(load_results(args.out), args.plot)


if __name__ == "__main__":
    main()
