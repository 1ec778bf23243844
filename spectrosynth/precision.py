"""What this machine computes fast: the CPU's matrix features, whether bfloat16 pays on it, and int8 decoders.

CPU flags alone do not say whether bfloat16 pays. With AMX (Intel Sapphire Rapids and newer) bfloat16
matrix products are several times faster than float32; with AVX512-BF16 alone they were 1.5x slower on an
Intel Xeon (model 207) and 1.7-3x faster on an AMD EPYC (Zen 5) (docs/performance.md). So `auto` measures,
once per machine: the first time, a probe of the products that dominate the model (under a second; measured
again near the threshold), and the decision is kept in the cache folder (spectrosynth.converted's
$SPECTROSYNTH_CACHE, default ~/.cache/spectrosynth) under cpu-dtype/, one small JSON file per CPU model and
torch version. Later processes read it and do not measure, so `auto` cannot flip with the machine's load;
processes starting together on a fresh machine wait for one measurement (a lock file beside it).
SPECTROSYNTH_CPU_DTYPE=float32|bfloat16 overrides it; deleting the file, or `spectrosynth doctor
--remeasure`, measures again. Without a writable cache the decision is made once a process, as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

MATRIX_FLAGS = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512f",
    "avx2",
)
#: ARM's matrix-relevant features ("Features" in /proc/cpuinfo): part of the decision's key only.
ARM_MATRIX_FLAGS = ("bf16", "i8mm", "sme", "sve", "sve2", "asimddp")

#: bfloat16 must be at least this many times faster than float32 for `auto` to take it on a CPU.
BFLOAT16_SPEEDUP_THRESHOLD = 1.25
#: What `--dtype auto` renders in on a CPU where bfloat16 is not faster. The one place to change it: "int8"
#: would take the int8 decoder there (float32 where this torch has no int8 engine). Training's
#: `--precision auto` never follows it: it is bfloat16 or float32.
SLOW_BFLOAT16_CPU_DTYPE = "float32"
#: Overrides the stored decision: what `auto` picks on a CPU, for renders and training.
CPU_DTYPE_VARIABLE = "SPECTROSYNTH_CPU_DTYPE"
CPU_DTYPE_OVERRIDES = ("float32", "bfloat16")

DECISION_FORMAT = "spectrosynth-cpu-dtype/1"
DECISION_FOLDER = "cpu-dtype"
#: The probe's product: a guided step's fused q/k/v projection (2 x 256 frames, 768 -> 3 x 768).
PROBE_SHAPE = (512, 768, 2304)
PROBE_ROUNDS = 8
PROBE_BUDGET_S = 0.8  # per measurement; at least 3 rounds are made whatever it takes
#: A first speedup within this factor of the threshold is measured again, twice as long, before deciding.
CONFIRM_BAND = 1.2


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_matrix_features() -> list[str]:
    """The matrix-relevant flags this CPU has, in a fixed order (for figures and bug reports)."""
    flags = cpu_flags()
    return [f for f in MATRIX_FLAGS if f in flags]


# /proc/cpuinfo fields that name the CPU (x86; then ARM), as the decision's key calls them.
_CPUINFO_FIELDS = {
    "vendor_id": "vendor",
    "cpu family": "family",
    "model": "model",
    "model name": "model_name",
    "CPU implementer": "implementer",
    "CPU architecture": "architecture",
    "CPU variant": "variant",
    "CPU part": "part",
}


@functools.lru_cache(maxsize=1)
def cpu_identity() -> dict[str, Any]:
    """What names this CPU for the `auto` decision: the architecture, vendor, family, model and model name
    (ARM: implementer, architecture, variant, part) and its matrix-relevant flags. Not the stepping, the core
    count or the frequency: machines that differ only in those share a decision."""
    identity: dict[str, Any] = {"machine": platform.machine()}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if len(identity) > 1:
                        break  # the first processor's block names them all
                    continue
                name, _, value = (part.strip() for part in line.partition(":"))
                if name in _CPUINFO_FIELDS:
                    identity.setdefault(_CPUINFO_FIELDS[name], value)
                elif name in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    if len(identity) == 1:  # no /proc/cpuinfo: macOS, Windows
        identity["model_name"] = _cpu_brand() or platform.processor()
    identity["flags"] = [f for f in (*MATRIX_FLAGS, *ARM_MATRIX_FLAGS) if f in flags]
    return identity


def _cpu_brand() -> str | None:
    if sys.platform != "darwin":
        return None
    import subprocess

    try:
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    brand = out.stdout.strip() if out.returncode == 0 else ""
    return brand or None


def decision_key() -> dict[str, Any]:
    """What the stored decision holds for: this CPU and this torch (its kernels decide the speeds)."""
    return {"cpu": cpu_identity(), "torch": torch.__version__}


def decision_file(key: dict[str, Any] | None = None) -> Path | None:
    """The file that keeps the decision for `key` (this machine's by default): one per CPU and torch, so a
    home folder shared by different machines keeps each one's. None when the cache is turned off."""
    from spectrosynth.converted import cache_home

    home = cache_home()
    if home is None:
        return None
    digest = hashlib.sha256(json.dumps(key or decision_key(), sort_keys=True).encode()).hexdigest()[:16]
    return home / DECISION_FOLDER / f"{digest}.json"


def cpu_dtype_override() -> str | None:
    """The precision SPECTROSYNTH_CPU_DTYPE forces `auto` to on a CPU, or None when it is unset or empty."""
    value = os.environ.get(CPU_DTYPE_VARIABLE, "").strip()
    if not value:
        return None
    if value.lower() not in CPU_DTYPE_OVERRIDES:
        from spectrosynth.errors import SpectrosynthError

        raise SpectrosynthError(
            f"{CPU_DTYPE_VARIABLE}={value!r} is not a precision; use {' or '.join(CPU_DTYPE_OVERRIDES)},"
            " or unset it to let --dtype auto decide"
        )
    return value.lower()


# ------------------------------------------------------------------------------------------------------
# The probe


def _best_times(rounds: int, budget_s: float) -> tuple[float, float, int]:
    """The fastest of `rounds` timings of two PROBE_SHAPE products in float32 and in bfloat16, taken in
    turns (the order alternating), so that a busy machine slows both alike and the minimum finds the
    quiet moments. Stops early after `budget_s` (never before 3 rounds).

    Returns (float32 seconds, bfloat16 seconds, rounds made)."""
    m, k, n = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    operands = {torch.float32: (a, b), torch.bfloat16: (a.to(torch.bfloat16), b.to(torch.bfloat16))}
    for x, y in operands.values():  # warm-up: kernels chosen, memory paged in
        x @ y
        x @ y
    best = dict.fromkeys(operands, math.inf)
    began, done = time.perf_counter(), 0
    for done in range(1, rounds + 1):
        for dtype in list(operands)[:: 1 if done % 2 else -1]:
            x, y = operands[dtype]
            start = time.perf_counter()
            x @ y
            x @ y
            best[dtype] = min(best[dtype], time.perf_counter() - start)
        if done >= 3 and time.perf_counter() - began > budget_s:
            break
    return best[torch.float32], best[torch.bfloat16], done


def measure_bfloat16_speedup(rounds: int = PROBE_ROUNDS, budget_s: float = PROBE_BUDGET_S) -> dict[str, Any]:
    """How many times faster this CPU multiplies the model's matrices in bfloat16 than in float32, on the
    threads torch uses now: {"speedup", "float32_s", "bfloat16_s", "rounds", "confirmed", "seconds",
    "threads"}. Under a second; a first result within CONFIRM_BAND of the threshold is measured again, twice
    as long, and the fastest times of both decide (about 2 s at most)."""
    began = time.perf_counter()
    f32, bf16, done = _best_times(rounds, budget_s)
    near = 1 / CONFIRM_BAND < (f32 / bf16) / BFLOAT16_SPEEDUP_THRESHOLD < CONFIRM_BAND
    if near:
        f32_again, bf16_again, more = _best_times(2 * rounds, budget_s)
        f32, bf16, done = min(f32, f32_again), min(bf16, bf16_again), done + more
    return {
        "speedup": f32 / bf16,
        "float32_s": f32,
        "bfloat16_s": bf16,
        "rounds": done,
        "confirmed": near,
        "seconds": time.perf_counter() - began,
        "threads": torch.get_num_threads(),
        "shape": list(PROBE_SHAPE),
    }


# ------------------------------------------------------------------------------------------------------
# The decision, kept once per machine


@dataclass(frozen=True)
class CpuDtypeDecision:
    """Whether bfloat16 pays on this CPU, as measured once (and kept) for its key."""

    bfloat16_faster: bool
    speedup: float  # float32 time / bfloat16 time of the probe's products
    measured_at: str  # UTC, ISO 8601
    key: dict[str, Any]
    file: Path | None  # where it is kept (None: the cache is turned off)
    stored: bool  # in the file (read from it, or written now); False: this process's own decision
    measured_now: bool  # probed by this process rather than read from the file


_decisions: dict[str, CpuDtypeDecision] = {}  # this process's, by file and key


def _read(path: Path | None, key: dict[str, Any]) -> CpuDtypeDecision | None:
    """The decision kept in `path` for `key`, or None: no file, or one that is damaged, of another format,
    threshold or key."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        speedup = data["speedup"]
        valid = (
            data["format"] == DECISION_FORMAT
            and data["key"] == key
            and data["threshold"] == BFLOAT16_SPEEDUP_THRESHOLD
            and isinstance(data["bfloat16_faster"], bool)
            and isinstance(speedup, int | float)
            and not isinstance(speedup, bool)
            and math.isfinite(speedup)
            and speedup > 0
            and isinstance(data["measured_at"], str)
        )
    except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable, not JSON, not an object
        return None
    if not valid:
        return None
    faster, measured_at = data["bfloat16_faster"], data["measured_at"]
    return CpuDtypeDecision(faster, float(speedup), measured_at, key, path, stored=True, measured_now=False)


def _write(path: Path, record: dict[str, Any]) -> bool:
    """Write the record atomically (a temporary file renamed over it: a reader, or another process
    deciding at the same moment, sees a whole file, never half of one); False where it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
            os.replace(part, path)
        except BaseException:
            try:
                os.unlink(part)
            except OSError:
                pass
            raise
    except OSError:  # read-only, full, or a file where the folder would be: decided for this process only
        return False
    return True


@contextlib.contextmanager
def _measuring_lock(folder: Path, timeout_s: float = 5.0) -> Iterator[None]:
    """Held while one process measures, so that processes starting together on one machine (a Ray or Slurm
    batch's workers, torchrun's ranks) wait for its decision instead of each measuring under the others' load
    and perhaps deciding otherwise. Best effort: without fcntl (Windows), where the lock file cannot be made,
    or after `timeout_s`, it goes on unlocked (the file is still written atomically)."""
    fd = None
    try:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
    except (ImportError, OSError):
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _measure(key: dict[str, Any], path: Path | None) -> CpuDtypeDecision:
    """Measure now and keep the decision in `path` (where it can be written)."""
    probe = measure_bfloat16_speedup()
    speedup = round(probe["speedup"], 4)  # as the file keeps it: every process sees the same figure
    faster = speedup >= BFLOAT16_SPEEDUP_THRESHOLD
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {
        "format": DECISION_FORMAT,
        "key": key,
        "bfloat16_faster": faster,
        "speedup": speedup,
        "threshold": BFLOAT16_SPEEDUP_THRESHOLD,
        "measured_at": measured_at,
        "probe": {k: round(v, 6) if isinstance(v, float) else v for k, v in probe.items() if k != "speedup"},
    }
    stored = path is not None and _write(path, record)
    return CpuDtypeDecision(faster, speedup, measured_at, key, path, stored, measured_now=True)


def cpu_dtype_decision(remeasure: bool = False) -> CpuDtypeDecision:
    """This CPU's decision: read from its file when one is kept for this CPU and torch, else measured now
    (measure_bfloat16_speedup) and kept for the next processes. Once a process either way; `remeasure`
    measures again and replaces the file. Never fails for the cache's sake: without one it decides for this
    process."""
    key = decision_key()
    path = decision_file(key)
    memo = json.dumps([str(path), key], sort_keys=True)
    if not remeasure:
        if memo in _decisions:
            return _decisions[memo]
        if (kept := _read(path, key)) is not None:
            _decisions[memo] = kept
            return kept
    if path is None:
        decision = _measure(key, None)
    else:
        with _measuring_lock(path.parent):
            # Another process may have decided while this one waited for the lock.
            decision = (None if remeasure else _read(path, key)) or _measure(key, path)
    _decisions[memo] = decision
    return decision


def stored_cpu_dtype_decision() -> CpuDtypeDecision | None:
    """The decision kept for this CPU and torch, if any, without measuring (for reports)."""
    key = decision_key()
    path = decision_file(key)
    return _decisions.get(json.dumps([str(path), key], sort_keys=True)) or _read(path, key)


def cpu_bfloat16_is_faster() -> bool:
    """Whether bfloat16 pays on this CPU: SPECTROSYNTH_CPU_DTYPE when set, else the decision kept for this
    CPU and torch (measured once per machine). What training's `--precision auto` follows."""
    override = cpu_dtype_override()
    if override is not None:
        return override == "bfloat16"
    return cpu_dtype_decision().bfloat16_faster


def auto_cpu_precision() -> str:
    """What `--dtype auto` renders in on a CPU: SPECTROSYNTH_CPU_DTYPE when set; else bfloat16 where it is
    measured faster, and SLOW_BFLOAT16_CPU_DTYPE elsewhere (float32; an int8 there needs an int8 engine)."""
    override = cpu_dtype_override()
    if override is not None:
        return override
    if cpu_dtype_decision().bfloat16_faster:
        return "bfloat16"
    if SLOW_BFLOAT16_CPU_DTYPE == "int8" and int8_engine() is None:
        return "float32"
    return SLOW_BFLOAT16_CPU_DTYPE


def int8_engine() -> str | None:
    """The quantized engine torch uses here for int8 products (fbgemm/x86 on x86, qnnpack on ARM), or None
    when this torch build has none."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return None
    current = torch.backends.quantized.engine
    return current if current in engines else engines[0]


def int8_targets(decoder: nn.Module) -> list[str]:
    """The decoder's linear layers that run once per step on all 256 frames: self- and cross-attention
    projections and the feed-forward, in every layer (97 % of a pass's products). The FiLM and time
    projections run on one row per step and stay float32."""
    return [
        name
        for name, module in decoder.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("layers.") and "film" not in name
    ]


def quantize_int8(decoder: nn.Module) -> nn.Module:
    """The decoder with those linear layers dynamically quantized to int8 (weights per tensor, activations
    per call), on torch's own CPU path (torch.ao.quantization.quantize_dynamic: fbgemm/oneDNN with VNNI on
    x86, qnnpack on ARM). In place; returns the decoder."""
    from spectrosynth.errors import SpectrosynthError

    engine = int8_engine()
    if engine is None:
        raise SpectrosynthError("this torch build has no int8 engine; use --dtype float32 or bfloat16")
    torch.backends.quantized.engine = engine
    targets = set(int8_targets(decoder))
    if not targets:  # already quantized (an empty spec would mean every linear layer to torch)
        return decoder
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(decoder, targets, dtype=torch.qint8, inplace=True)
    return decoder


def is_int8(module: nn.Module) -> int:
    """How many of the module's layers are int8 dynamic-quantized linears (0: none)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in module.modules())


def cuda_bfloat16_is_native() -> bool:
    """bfloat16 computed by the GPU itself (Ampere and newer), not emulated, slowly, as on a T4 or V100."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 counted no emulation
        return torch.cuda.is_bf16_supported()
