"""A converted copy of a model's networks in the precision a render computes in, so that start-up is quick.

The published weights are float32. float32 on a CPU loads memory-mapped in a fraction of a second, but every
other precision had to be made at each start: bfloat16 (and float16) by converting 1.6 GB and merging the
projections, int8 by quantizing the decoder (about 3.4 s on a 2-core CPU for the published sizes). A short
render, or a shell loop over many files, paid that each time. Now the first load in a precision writes the
converted networks (safetensors, one file per network) into the cache, and later loads memory-map them.

The copy is checked before use: it records the source it was made from (each weights file's resolved path,
size and modification time, and a hash of its config.json) and the format of this module; a copy that does
not match, cannot be read, or whose tensors do not fit the networks is ignored and made again. The cache
lives in $SPECTROSYNTH_CACHE (default ~/.cache/spectrosynth, or $XDG_CACHE_HOME/spectrosynth), under
converted/; SPECTROSYNTH_CACHE=off turns it off. An unwritable cache only costs the conversion, never the
render. Delete the folder to reclaim the space (about 0.8 GB for the published model in bfloat16).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from spectrosynth import models, weights
from spectrosynth.precision import int8_targets

FORMAT = "spectrosynth-converted/1"
COMPONENTS = ("notes_encoder", "continuous_encoder", "decoder")
PRECISIONS = ("bfloat16", "float16", "int8")  # float32 needs no copy: it is the published file itself


def components(precision: str) -> tuple[str, ...]:
    """The networks kept converted: all three in bfloat16 and float16; in int8 the decoder alone (the
    encoders stay float32, read from the published files)."""
    return ("decoder",) if precision == "int8" else COMPONENTS


_INT8 = ".int8_weight"  # suffixes of a quantized linear layer's stored parts
_SCALE = ".int8_scale"
_ZERO = ".int8_zero_point"


def cache_home() -> Path | None:
    """spectrosynth's cache folder ($SPECTROSYNTH_CACHE, default ~/.cache/spectrosynth or
    $XDG_CACHE_HOME/spectrosynth), or None when the cache is turned off. It holds converted/ and the CPU's
    `--dtype auto` decision (spectrosynth.precision)."""
    explicit = os.environ.get("SPECTROSYNTH_CACHE")
    if explicit is not None:
        return None if explicit.strip().lower() in ("", "0", "off", "none") else Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectrosynth"


def cache_root() -> Path | None:
    """Where converted copies are kept, or None when the cache is turned off."""
    home = cache_home()
    return None if home is None else home / "converted"


def _source(folder: Path, component: str) -> dict[str, object]:
    path = weights.weights_file(folder, component)
    if path is None:
        raise FileNotFoundError(f"{folder / component} has no weights")
    real = path.resolve()
    stat = real.stat()
    config = (folder / component / "config.json").read_bytes()
    return {
        "weights": str(real),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "config_sha256": hashlib.sha256(config).hexdigest(),
    }


def model_fingerprint(folder: str | os.PathLike[str]) -> dict[str, object]:
    """What names a model's files, as the converted copies check them: each network's weights file
    (resolved path, size, modification time) and config hash, and the scheduler's config hash (the
    `diffusers` sampler reads its schedule). The segment cache (spectrosynth.segment_cache) keys on it."""
    folder = Path(folder)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    schedule = hashlib.sha256(scheduler.read_bytes()).hexdigest() if scheduler.exists() else None
    return {"networks": {c: _source(folder, c) for c in COMPONENTS}, "scheduler_sha256": schedule}


def _fingerprint(folder: Path, precision: str) -> dict[str, object]:
    return {
        "format": FORMAT,
        "precision": precision,
        "torch": torch.__version__.split("+")[0],
        "sources": {c: _source(folder, c) for c in components(precision)},
    }


def _entry(folder: Path, precision: str) -> tuple[Path, str] | None:
    """The cache folder for this model and precision, and the fingerprint it must hold (None: no cache,
    or a precision that needs no copy)."""
    root = cache_root()
    if root is None or precision not in PRECISIONS:
        return None
    fingerprint = json.dumps(_fingerprint(Path(folder), precision), sort_keys=True)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:24]
    return root / f"{precision}-{key}", fingerprint


# ------------------------------------------------------------------------------------------------------
# Writing


def _flat_tensors(net: nn.Module, quantized: bool) -> dict[str, torch.Tensor]:
    """The network's tensors as plain named tensors: its state dict, with each int8 linear layer stored
    as its int8 weights, scale and zero point (its packed form is not a tensor)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    out: dict[str, torch.Tensor] = {}
    skip: list[str] = []
    if quantized:
        for name, module in net.named_modules():
            if isinstance(module, DynamicQuantizedLinear):
                weight = module.weight()
                out[name + _INT8] = weight.int_repr().contiguous()
                out[name + _SCALE] = torch.tensor(weight.q_scale(), dtype=torch.float64)
                out[name + _ZERO] = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
                skip.append(name + ".")
    for key, tensor in net.state_dict().items():
        if not any(key.startswith(prefix) for prefix in skip):
            out[key] = tensor.detach().to("cpu").contiguous()
    return out


def save(folder: str | os.PathLike[str], precision: str, nets: dict[str, nn.Module]) -> Path | None:
    """Keep the converted networks (as a Synthesizer holds them) for the next load; returns the folder, or
    None when there is no cache or it cannot be written (nothing is left half-written)."""
    try:
        if (entry := _entry(Path(folder), precision)) is None:
            return None
        target, fingerprint = entry
        from safetensors.torch import save_file

        target.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for component in components(precision):
                tensors = _flat_tensors(nets[component], precision == "int8")
                metadata = {"format": FORMAT, "fingerprint": fingerprint}
                save_file(tensors, part / f"{component}.safetensors", metadata=metadata)
            if target.exists():
                import shutil

                shutil.rmtree(target, ignore_errors=True)
            os.replace(part, target)
        except BaseException:
            import shutil

            shutil.rmtree(part, ignore_errors=True)
            raise
        return target
    except (OSError, RuntimeError, ValueError):  # a full or read-only disk costs only the next start-up
        return None


# ------------------------------------------------------------------------------------------------------
# Reading


def _quantized_linear(raw: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> nn.Module:
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    with warnings.catch_warnings():  # torch announces the quantized dtypes' move to torchao
        warnings.simplefilter("ignore")
        qweight = torch._make_per_tensor_quantized_tensor(raw, float(scale), int(zero))
    module = DynamicQuantizedLinear(raw.shape[1], raw.shape[0], bias_=False, dtype=torch.qint8)
    module.set_weight_bias(qweight, None)
    return module


def _set_module(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, module)


def _restore(component: str, config: dict, tensors: dict[str, torch.Tensor], precision: str) -> nn.Module:
    """The network from its stored tensors, checked against its structure: every tensor present, of the
    right shape and precision, nothing left over (ValueError otherwise)."""
    cls, config_cls = models.CLASSES[component]
    with torch.device("meta"):
        net = cls(config_cls.from_dict(config))
    int8 = precision == "int8"
    net.fuse_projections()  # as the Synthesizer holds them in these precisions
    tensors = dict(tensors)
    layers: dict[str, tuple[torch.Tensor, ...]] = {}
    if int8:
        expected = set(int8_targets(net))
        stored = {k[: -len(_INT8)] for k in tensors if k.endswith(_INT8)}
        if stored != expected:
            raise ValueError("the int8 layers stored are not the decoder's")
        for name in sorted(stored):
            layers[name] = (tensors.pop(name + _INT8), tensors.pop(name + _SCALE), tensors.pop(name + _ZERO))
            if (
                layers[name][0].dtype != torch.int8
                or layers[name][0].shape != net.get_submodule(name).weight.shape
            ):
                raise ValueError(f"{name}: stored int8 weights do not fit")
    dtype = torch.float32 if int8 else getattr(torch, precision)
    prefixes = tuple(name + "." for name in layers)
    wanted = {k: v for k, v in net.state_dict().items() if not k.startswith(prefixes or ("\0",))}
    if set(wanted) != set(tensors):
        raise ValueError("the stored tensors are not the network's")
    for key, tensor in tensors.items():
        if tensor.shape != wanted[key].shape or (tensor.is_floating_point() and tensor.dtype != dtype):
            raise ValueError(f"{key}: stored as {tensor.dtype} {tuple(tensor.shape)}")
    net.load_state_dict(tensors, strict=False, assign=True)  # the int8 layers' places are filled next
    for name, parts in layers.items():
        _set_module(net, name, _quantized_linear(*parts))
    return net.eval().requires_grad_(False)


def load(folder: str | os.PathLike[str], precision: str) -> dict[str, nn.Module] | None:
    """The converted networks of this model in this precision (those of `components`), memory-mapped, or
    None when there is no matching, intact copy (then convert as usual and `save`)."""
    try:
        if (entry := _entry(Path(folder), precision)) is None or not entry[0].is_dir():
            return None
        target, fingerprint = entry
        from safetensors import safe_open
        from safetensors.torch import load_file

        nets = {}
        for component in components(precision):
            path = target / f"{component}.safetensors"
            with safe_open(path, framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") != fingerprint:
                    return None
            config = weights.read_config(folder, component)
            nets[component] = _restore(component, config, load_file(path), precision)
        return nets
    except Exception:  # noqa: BLE001 - a damaged or foreign copy is ignored and made again
        return None
