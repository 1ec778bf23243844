"""What `spectrosynth doctor` reports: this installation, its devices and caches, for a bug report.

`collect()` returns a dict in a stable format (schema "spectrosynth.doctor/1"): one section per probe, in a
fixed order. Every probe is guarded: a probe that fails gives ``{"error": "Type: message"}`` as its section
(or in the line it was filling) and the others still run. Nothing is downloaded and no network is used:
the model is looked for in the Hugging Face cache only. `format_report` turns the dict into aligned
"key: value" lines, grouped by section.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = "spectrosynth.doctor/1"

#: Environment variables that change what spectrosynth does; reported when set.
ENVIRONMENT = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "SPECTROSYNTH_CACHE",
    "SPECTROSYNTH_CPU_DTYPE",
    "SPECTROSYNTH_DEBUG",
    "SPECTROSYNTH_SMALL_URL",
    "XDG_CACHE_HOME",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)

#: Packages reported by version (distribution names); the optional ones show "not installed" when absent.
PACKAGES = (
    "numpy",
    "soundfile",
    "soxr",
    "pyloudnorm",
    "huggingface_hub",
    "pretty_midi",
    "onnxruntime",
    "typer",
    "safetensors",
    "sounddevice",
)
OPTIONAL_PACKAGES = (
    "onnxruntime-gpu",
    "pyarrow",
    "peft",
    "basic-pitch",
    "ray",
    "pyfluidsynth",
    "librosa",
    "mir_eval",
)

#: The CPU matrix features reported, by the names bug reports use, and their /proc/cpuinfo flags.
CPU_FEATURES = {
    "AMX": "amx_bf16",
    "AVX512-BF16": "avx512_bf16",
    "AVX512-VNNI": "avx512_vnni",
    "AVX-VNNI": "avx_vnni",
    "AVX512F": "avx512f",
    "AVX2": "avx2",
}

NOT_INSTALLED = "not installed"


def error_text(e: BaseException) -> str:
    """An exception as one short line: "Type: message"."""
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def guarded(probe: Callable[[], Any]) -> Any:
    """probe(), or {"error": ...} when it raises."""
    try:
        return probe()
    except Exception as e:  # a probe must never stop the report
        return {"error": error_text(e)}


def package_version(name: str) -> str:
    """The installed version of distribution `name`, or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


# ------------------------------------------------------------------------------------------------------
# Probes: each returns one section of the report.


def probe_spectrosynth() -> dict[str, Any]:
    import spectrosynth

    return {"version": package_version("spectrosynth"), "location": str(Path(spectrosynth.__file__).parent)}


def probe_python() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def probe_platform() -> dict[str, Any]:
    libc = " ".join(v for v in platform.libc_ver() if v) if sys.platform.startswith("linux") else ""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "libc": libc or None,
    }


def _torch_build(torch: Any) -> str:
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU"


def probe_torch() -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {
        "version": torch.__version__,
        "build": _torch_build(torch),
        "cuda": torch.version.cuda,
        "cudnn": guarded(lambda: torch.backends.cudnn.version() if torch.version.cuda else None),
        "mps_available": guarded(lambda: bool(torch.backends.mps.is_available())),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    return report


def _cuda_device(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    with torch.cuda.device(index):
        bf16_native = torch.cuda.is_bf16_supported(including_emulation=False)
        bf16 = torch.cuda.is_bf16_supported()
    capability = (props.major, props.minor)
    return {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 1e9, 2),
        "multiprocessors": props.multi_processor_count,
        "bfloat16": bool(bf16),  # what torch.cuda.is_bf16_supported() says (emulation included)
        "bfloat16_native": bool(bf16_native),  # compute capability 8.0 (Ampere) and newer
        "float16": capability >= (5, 3),  # native half-precision arithmetic
    }


def probe_cuda() -> dict[str, Any]:
    import torch

    available = torch.cuda.is_available()
    report: dict[str, Any] = {"available": available}
    if not available:
        report["reason"] = (
            "this torch is a CPU build" if not torch.version.cuda else "torch found no CUDA device or driver"
        )
        return report
    count = torch.cuda.device_count()
    report["device_count"] = count
    report["driver"] = guarded(_nvidia_driver)
    report["devices"] = [guarded(lambda i=i: _cuda_device(torch, i)) for i in range(count)]
    return report


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None when there is no nvidia-smi)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def cpu_model_name() -> str | None:
    """The CPU's model name: /proc/cpuinfo on Linux, sysctl on macOS, else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86; ARM boards say "Model"
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return platform.processor() or None


def probe_cpu() -> dict[str, Any]:
    from spectrosynth.precision import cpu_flags, cpu_matrix_features

    flags = cpu_flags()
    return {
        "model": guarded(cpu_model_name),
        "cores": os.cpu_count(),
        "features": {name: flag in flags for name, flag in CPU_FEATURES.items()} if flags else None,
        "matrix_flags": cpu_matrix_features(),
    }


def probe_cpu_dtype() -> dict[str, Any]:
    """How `--dtype auto` decides on this CPU (spectrosynth.precision): what it picks for renders and for
    training, the measured bfloat16 speedup, when it was measured, the file that keeps it, and the override.
    Measures (under a second) only where no decision is kept yet; with an override in force, never."""
    from spectrosynth import precision

    override = guarded(precision.cpu_dtype_override)
    if isinstance(override, str):
        decision = precision.stored_cpu_dtype_decision()
        source = "override" + ("" if decision else "; not measured")
    else:
        decision = precision.cpu_dtype_decision()
        source = "measured now" if decision.measured_now else "kept from an earlier measurement"
        if decision.measured_now and not decision.stored:
            source += "; not kept (" + ("the cache is off" if decision.file is None else "cannot write") + ")"
    file = decision.file if decision else precision.decision_file()
    return {
        "picks": guarded(precision.auto_cpu_precision),
        "train_picks": guarded(lambda: "bfloat16" if precision.cpu_bfloat16_is_faster() else "float32"),
        "override": f"{precision.CPU_DTYPE_VARIABLE}={override}" if isinstance(override, str) else override,
        "bfloat16_speedup": round(decision.speedup, 2) if decision else None,
        "threshold": precision.BFLOAT16_SPEEDUP_THRESHOLD,
        "measured_at": decision.measured_at if decision else None,
        "source": source,
        "file": str(file) if file else None,
        "stored": bool(decision and decision.stored),
        "hint": f"{precision.CPU_DTYPE_VARIABLE}=float32|bfloat16 forces a choice; "
        "`spectrosynth doctor --remeasure` measures again",
    }


def probe_auto_dtype() -> dict[str, Any]:
    """What `--dtype auto` resolves to on each device (spectrosynth.pipeline.resolve_precision)."""
    import torch

    from spectrosynth.pipeline import resolve_precision

    picks: dict[str, Any] = {"cpu": guarded(lambda: resolve_precision("auto", torch.device("cpu")))}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            picks[f"cuda:{i}"] = guarded(lambda i=i: resolve_precision("auto", torch.device(f"cuda:{i}")))
    return picks


def probe_onnxruntime() -> dict[str, Any]:
    import onnxruntime

    return {
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
        "device": guarded(onnxruntime.get_device),
    }


def _libsndfile() -> str:
    import soundfile

    return str(soundfile.__libsndfile_version__)


def probe_packages() -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name in PACKAGES:
        report[name] = guarded(lambda name=name: package_version(name))
        if name == "soundfile":
            report["libsndfile"] = guarded(_libsndfile)
    for name in OPTIONAL_PACKAGES:
        report[name] = guarded(lambda name=name: package_version(name))
    return report


def probe_fluidsynth() -> dict[str, Any]:
    """Whether soundfont rendering can load the FluidSynth library (spectrosynth.soundfont)."""
    from spectrosynth import soundfont
    from spectrosynth.errors import SpectrosynthError

    try:
        soundfont._fluidsynth()
    except SpectrosynthError as e:
        return {"loads": False, "reason": str(e)}
    return {"loads": True}


def probe_audio() -> dict[str, Any]:
    """What `spectrosynth play` and `render --play` would play through: PortAudio (its version, or why it
    cannot be loaded) and the audio outputs it lists (spectrosynth.playback)."""
    from spectrosynth import playback
    from spectrosynth.errors import PlaybackError

    try:
        version = playback.portaudio_version()
    except PlaybackError as e:
        return {"portaudio": None, "reason": str(e)}
    report: dict[str, Any] = {"portaudio": version}
    devices = guarded(playback.output_devices)
    if isinstance(devices, dict):  # the listing failed: its error
        report["outputs"] = devices
        return report
    report["outputs"] = [
        {"index": d.index, "name": d.name, "hostapi": d.hostapi, "channels": d.channels,
         "samplerate": d.samplerate, "default": d.default}
        for d in devices
    ]  # fmt: skip
    if not devices:
        report["hint"] = "no output device: no sound card, or no sound server (PulseAudio, PipeWire) running"
    return report


def _size(folder: Path) -> int:
    """Bytes of the files under `folder`, each counted once (a hub snapshot links into blobs/)."""
    total, seen = 0, set()
    for path in folder.rglob("*"):
        try:
            real = path.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            total += real.stat().st_size
        except OSError:
            continue
    return total


def probe_model() -> dict[str, Any]:
    """The published model in the Hugging Face cache, found and checked the way renders find it
    (spectrosynth.weights), without any network access."""
    from huggingface_hub import constants

    from spectrosynth import weights

    cache = Path(constants.HF_HUB_CACHE)
    repo = cache / ("models--" + weights.DEFAULT_MODEL.replace("/", "--"))
    report: dict[str, Any] = {
        "repo": weights.DEFAULT_MODEL,
        "hf_hub_cache": str(cache),
        "hf_hub_offline": bool(constants.HF_HUB_OFFLINE),
    }
    snapshot = weights._cached_snapshot(weights.DEFAULT_MODEL, None) if repo.is_dir() else None
    report["cached"] = snapshot is not None
    if snapshot is None:
        report["complete"] = False
        report["hint"] = "run `spectrosynth download` (1.7 GB), or the first render downloads it"
        return report
    missing = weights.missing_files(snapshot)
    partial = (
        sorted(p.name for p in (repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else []
    )
    report.update(
        folder=str(snapshot),
        complete=not missing,
        missing=missing,
        size_gb=round(_size(snapshot) / 1e9, 3),
        interrupted_downloads=len(partial),
    )
    if missing:
        report["hint"] = "run `spectrosynth download` to finish it"
    return report


def probe_small_model() -> dict[str, Any]:
    """The authors' small model in spectrosynth's cache (spectrosynth.small_model, `--model small`): its zip
    (complete, or a partial download), the converted folder and whether it has a vocoder. Looks only."""
    from spectrosynth import small_model, weights
    from spectrosynth.errors import SpectrosynthError

    report: dict[str, Any] = {"url": small_model.url()}
    try:
        home = small_model.models_dir()
    except SpectrosynthError:  # SPECTROSYNTH_CACHE=off: nowhere to keep it
        return {**report, "enabled": False}
    archive, part, model = small_model.zip_path(), home / f"{small_model.NAME}.zip.part", small_model.folder()
    report["zip"] = str(archive)
    report["zip_cached"] = archive.is_file()
    report["zip_mb"] = round(archive.stat().st_size / 1e6, 1) if archive.is_file() else None
    if part.is_file():
        report["partial_download_mb"] = round(part.stat().st_size / 1e6, 1)
    report["converted"] = small_model.is_converted()
    report["folder"] = str(model)
    if report["converted"]:
        report["vocoder"] = (model / weights.MELGAN).is_file()
        report["size_gb"] = round(_size(model) / 1e9, 3)
    else:
        report["hint"] = "run `spectrosynth download small`, or the first render with --model small does it"
    return report


def probe_converted_cache() -> dict[str, Any]:
    """spectrosynth's cache of converted weights (spectrosynth.converted)."""
    from spectrosynth import converted

    root = converted.cache_root()
    if root is None:
        return {"enabled": False, "folder": None}
    entries = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    return {
        "enabled": True,
        "folder": str(root),
        "exists": root.is_dir(),
        "entries": len(entries),
        "precisions": sorted({name.split("-", 1)[0] for name in entries}),
        "size_gb": round(_size(root) / 1e9, 3) if root.is_dir() else 0.0,
    }


def probe_segment_cache() -> dict[str, Any]:
    """spectrosynth's cache of rendered segments (spectrosynth.segment_cache): folder, entries, size. The
    bound is each render's --cache-size (default DEFAULT_SIZE)."""
    from spectrosynth import segment_cache

    root = segment_cache.cache_root()
    if root is None:
        return {"enabled": False, "folder": None}
    entries, size = segment_cache.SegmentCache(root).usage() if root.is_dir() else (0, 0)
    return {
        "enabled": True,
        "folder": str(root),
        "exists": root.is_dir(),
        "entries": entries,
        "size_mb": round(size / 1e6, 1),
        "default_bound": segment_cache.DEFAULT_SIZE,
    }


def probe_environment() -> dict[str, Any]:
    return {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}


#: The report's sections in order, each filled by its probe. Tests replace entries to make one fail.
PROBES: dict[str, Callable[[], Any]] = {
    "spectrosynth": probe_spectrosynth,
    "python": probe_python,
    "platform": probe_platform,
    "torch": probe_torch,
    "cuda": probe_cuda,
    "cpu": probe_cpu,
    "auto_dtype": probe_auto_dtype,
    "cpu_dtype": probe_cpu_dtype,
    "onnxruntime": probe_onnxruntime,
    "packages": probe_packages,
    "fluidsynth": probe_fluidsynth,
    "audio": probe_audio,
    "model": probe_model,
    "small_model": probe_small_model,
    "converted_cache": probe_converted_cache,
    "segment_cache": probe_segment_cache,
    "environment": probe_environment,
}


def collect(remeasure: bool = False) -> dict[str, Any]:
    """Every probe's section, in PROBES order, plus the schema and how long it took. What a probe prints
    goes to stderr. remeasure: measure the CPU's bfloat16 speed again first and keep the new decision for
    `--dtype auto` (spectrosynth.precision)."""
    import contextlib

    began = time.perf_counter()
    report: dict[str, Any] = {"schema": SCHEMA}
    # A module that prints while imported (pyfluidsynth does under CI=true) must not mix into --json.
    with contextlib.redirect_stdout(sys.stderr):
        if remeasure:
            from spectrosynth.precision import cpu_dtype_decision

            guarded(lambda: cpu_dtype_decision(remeasure=True))  # the section below reports it, or its error
        for name, probe in PROBES.items():
            report[name] = guarded(probe)
    report["seconds"] = round(time.perf_counter() - began, 2)
    return report


# ------------------------------------------------------------------------------------------------------
# Text


TITLES = {
    "spectrosynth": "spectrosynth",
    "python": "Python",
    "platform": "OS",
    "torch": "torch",
    "cuda": "CUDA devices",
    "cpu": "CPU",
    "auto_dtype": "--dtype auto picks",
    "cpu_dtype": "--dtype auto on this CPU: how it was decided",
    "onnxruntime": "onnxruntime (vocoder)",
    "packages": "packages",
    "fluidsynth": "FluidSynth (dataset --soundfont)",
    "audio": "audio output (play, render --play)",
    "model": "published model in the Hugging Face cache",
    "small_model": "the authors' small model (--model small) in spectrosynth's cache",
    "converted_cache": "converted-weights cache",
    "segment_cache": "rendered-segments cache (render --cache-size)",
    "environment": "environment",
}


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if set(value) == {"error"}:
            return f"error: {value['error']}"
        if all(isinstance(v, bool) for v in value.values()):  # feature flags: the ones present
            present = [k for k, v in value.items() if v]
            return ", ".join(present) if present else "none"
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) if value else "none"
    return str(value)


#: Sections whose keys are names (packages, variables), shown as they are rather than as words.
LITERAL_KEYS = ("packages", "environment")


def _rows(section: Any, literal: bool = False) -> list[tuple[str, str]]:
    if not isinstance(section, dict):
        return [("", _text(section))]
    if set(section) == {"error"}:
        return [("error", section["error"])]
    rows: list[tuple[str, str]] = []
    for key, value in section.items():
        if key == "outputs" and isinstance(value, list):  # audio outputs: one line each
            for out in value:
                default = ", the default" if out["default"] else ""
                where = f"{out['hostapi']}, {out['channels']} channels, {out['samplerate']:g} Hz{default}"
                rows.append((f"output {out['index']}", f"{out['name']} ({where})"))
            if not value:
                rows.append(("outputs", "none"))
            continue
        if key == "devices" and isinstance(value, list):
            for device in value:
                if isinstance(device, dict) and "index" in device:
                    prefix = f"cuda:{device['index']}"
                    rows += [(f"{prefix} {k}", _text(v)) for k, v in device.items() if k != "index"]
                else:
                    rows.append(("device", _text(device)))
            continue
        rows.append((key if literal else key.replace("_", " "), _text(value)))
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The report as text: a title per section, then aligned "key: value" lines."""
    sections = [
        (TITLES.get(name, name), _rows(report[name], name in LITERAL_KEYS))
        for name in PROBES
        if name in report
    ]
    width = max((len(key) for _, rows in sections for key, _ in rows), default=0)
    lines = [f"spectrosynth doctor ({report.get('seconds', 0):.1f} s); paste this into a bug report", ""]
    for title, rows in sections:
        lines.append(f"{title}:")
        if not rows:
            lines.append("  (none set)")
        for key, value in rows:
            lines.append(f"  {key + ':':<{width + 1}} {value}" if key else f"  {value}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
