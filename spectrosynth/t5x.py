"""The authors' t5x checkpoints (magenta/music-spectrogram-diffusion), read without JAX and written in the
published layout (`spectrosynth convert`).

The authors released two trained models as t5x checkpoints, zipped: base_with_context (converted to
google/music-spectrogram-diffusion by diffusers' scripts/convert_music_spectrogram_to_diffusers.py) and
small_with_context (only as the zip). Unzipped, a run's folder holds:

    config.gin                      the training run's gin configuration (`network.T5Config.emb_dim = 512`)
    checkpoint_500000/
      checkpoint                    msgpack (flax.serialization): {"version": 3, "optimizer": {"target": ...,
                                    "state": ...}}: the parameters and the optimizer's state (Adafactor's)
      target.decoder.layers_0.mlp.wi_0.kernel/    one zarr v2 array per parameter, written by tensorstore:
        .zarray                     JSON: shape, chunks, dtype ("<f4" or "bfloat16"), compressor (gzip), order
        0.0, 0.1, ...               the chunks, each gzip-compressed, C order, edge chunks padded
      state.param_states.decoder.layers_0.mlp.wi_0.kernel.v_row/   ... the optimizer's arrays (not read)

In the msgpack tree each parameter is either the array itself (msgpack extension type 1: shape, dtype name,
C-order bytes; type 3 a numpy scalar) or, for the arrays tensorstore wrote, its tensorstore spec: a dict
`{"driver": "zarr", "kvstore": {"driver": "file" | "gcs", "path": "target.decoder.layers_0.mlp.wi_0.kernel"},
"metadata": {"shape": ..., "chunks": ..., "compressor": {"id": "gzip"}}, "dtype": "float32"}`, the path
relative to checkpoint_N/ (t5x before tensorstore 0.1.14 put "path" beside "kvstore"). Version 0 is a plain
flax tree without "optimizer". Only "target" is read.

`target` is flax's parameter tree of the original network (`models/diffusion/network.py`): `token_encoder`,
`continuous_encoder` and `decoder`, with flax's module names (`layers_0`, `Embed_0`, `FiLMLayer_0`,
`MultiHeadDotProductAttention_0`, ...). Dense kernels are [in, out] (2-D even for attention: heads are
joined), torch's Linear weights [out, in]: every kernel is transposed; embeddings and norm scales are copied.
The names map one to one onto the published keys as diffusers' conversion script maps them (`FLAX_NAMES`).

The sizes come from the arrays' shapes (width, layers, feed-forward width, lengths, vocabulary); the number
of heads from config.gin (`num_heads`, `head_dim`), which is checked against the shapes, or `num_heads`, or
heads of 64 (T5's, and every size of the authors') when neither says. Reading needs msgpack (the `convert`
extra); the zarr arrays are read here (zlib), so neither tensorstore nor zarr is needed.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from spectrosynth import weights
from spectrosynth.errors import SpectrosynthError
from spectrosynth.presets import configs_for, model_index

CONVERT_EXTRA = "pip install 'spectrosynth[convert]'"
#: The original network's three modules, by the published component each becomes.
MODULES = {"notes_encoder": "token_encoder", "continuous_encoder": "continuous_encoder", "decoder": "decoder"}
#: T5's head width, assumed when neither config.gin nor the caller says how many heads there are.
T5_HEAD_DIM = 64
_STEP = re.compile(r"checkpoint_(\d+)")
_LAYER = re.compile(r"layers_(\d+)")


class T5xError(SpectrosynthError):
    """A file or folder that is not a complete t5x checkpoint of the model, or one that cannot be
    converted."""


# --------------------------------------------------------------------------------------------------------
# Flax names -> published names (diffusers' scripts/convert_music_spectrogram_to_diffusers.py)

_ATTENTION = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
_DECODER_ATTENTION = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("out", "to_out.0"))
_MLP = ("wi_0", "wi_1", "wo")


def _encoder_layer(i: int) -> list[tuple[str, str]]:
    f, p = f"layers_{i}", f"encoders.{i}.layer"
    names = [(f"{f}/pre_attention_layer_norm/scale", f"{p}.0.layer_norm.weight")]
    names += [(f"{f}/attention/{a}/kernel", f"{p}.0.SelfAttention.{b}.weight") for a, b in _ATTENTION]
    names += [(f"{f}/pre_mlp_layer_norm/scale", f"{p}.1.layer_norm.weight")]
    names += [(f"{f}/mlp/{w}/kernel", f"{p}.1.DenseReluDense.{w}.weight") for w in _MLP]
    return names


def _decoder_layer(i: int) -> list[tuple[str, str]]:
    f, p = f"layers_{i}", f"decoders.{i}.layer"
    names = [
        (f"{f}/pre_self_attention_layer_norm/scale", f"{p}.0.layer_norm.weight"),
        (f"{f}/FiLMLayer_0/DenseGeneral_0/kernel", f"{p}.0.FiLMLayer.scale_bias.weight"),
    ]
    names += [
        (f"{f}/self_attention/{a}/kernel", f"{p}.0.attention.{b}.weight") for a, b in _DECODER_ATTENTION
    ]
    names += [
        (f"{f}/MultiHeadDotProductAttention_0/{a}/kernel", f"{p}.1.attention.{b}.weight")
        for a, b in _DECODER_ATTENTION
    ]
    names += [
        (f"{f}/pre_cross_attention_layer_norm/scale", f"{p}.1.layer_norm.weight"),
        (f"{f}/pre_mlp_layer_norm/scale", f"{p}.2.layer_norm.weight"),
        (f"{f}/FiLMLayer_1/DenseGeneral_0/kernel", f"{p}.2.film.scale_bias.weight"),
    ]
    names += [(f"{f}/mlp/{w}/kernel", f"{p}.2.DenseReluDense.{w}.weight") for w in _MLP]
    return names


def flax_names(component: str, num_layers: int) -> list[tuple[str, str]]:
    """(flax parameter path under the component's module, published key) for every parameter, in the
    published order. A path ending in /kernel is a dense kernel [in, out], transposed to [out, in]."""
    if component == "notes_encoder":
        head = [
            ("token_embedder/embedding", "token_embedder.weight"),
            ("Embed_0/embedding", "position_encoding.weight"),
        ]
    elif component == "continuous_encoder":
        head = [("input_proj/kernel", "input_proj.weight"), ("Embed_0/embedding", "position_encoding.weight")]
    elif component == "decoder":
        head = [
            ("time_emb_dense0/kernel", "conditioning_emb.0.weight"),
            ("time_emb_dense1/kernel", "conditioning_emb.2.weight"),
            ("Embed_0/embedding", "position_encoding.weight"),
            ("continuous_inputs_projection/kernel", "continuous_inputs_projection.weight"),
        ]
        layers = [n for i in range(num_layers) for n in _decoder_layer(i)]
        return (
            head
            + layers
            + [("decoder_norm/scale", "decoder_norm.weight"), ("spec_out_dense/kernel", "spec_out.weight")]
        )
    else:
        raise ValueError(f"unknown component {component!r}")
    layers = [n for i in range(num_layers) for n in _encoder_layer(i)]
    return head + layers + [("encoder_norm/scale", "layer_norm.weight")]


# --------------------------------------------------------------------------------------------------------
# Where the files are: a folder or a zip


class _Files:
    """The files of a checkpoint, by '/'-separated path relative to a root: a folder's or a zip's."""

    name: str

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FolderFiles(_Files):
    def __init__(self, root: Path):
        self.root, self.name = root, str(root)

    def read(self, path: str) -> bytes | None:
        try:
            return (self.root / path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None


class _ZipFiles(_Files):
    def __init__(self, path: Path):
        self.name = str(path)
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise T5xError(
                f"{path} is not a complete zip archive ({e}); the download was cut short or the file is "
                "damaged: download it again"
            ) from None
        self.members = {info.filename: info for info in self.zip.infolist() if not info.is_dir()}

    def read(self, path: str) -> bytes | None:
        if path not in self.members:
            return None
        try:
            return self.zip.read(self.members[path])
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a bad CRC, a cut or damaged member
            raise T5xError(
                f"{self.name}: {path} is damaged in the archive ({e}); download it again"
            ) from None

    def close(self) -> None:
        self.zip.close()


def _looks_like_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


# --------------------------------------------------------------------------------------------------------
# Opening a checkpoint


@dataclass
class Checkpoint:
    """An opened t5x checkpoint: its parameter tree and where its arrays are. Close it (or use `with`)."""

    files: _Files
    where: str  # the checkpoint_N folder, relative to the files' root ("" for the root itself)
    label: str  # for messages: the path given, and inside a zip the folder
    step: int | None
    target: dict[str, Any]
    gin: dict[str, Any] | None = None  # config.gin's bindings, when there is one
    gin_label: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.files.close()

    def path(self, name: str) -> str:
        return f"{self.where}/{name}" if self.where else name

    def leaf(self, module: str, name: str) -> Any:
        """The tree's leaf at `module`/`name` ('/'-separated), or a T5xError naming it."""
        node: Any = self.target.get(module)
        for part in name.split("/"):
            if not isinstance(node, dict) or part not in node:
                raise T5xError(
                    f"{self.label} has no parameter {module}/{name}; it is not a checkpoint of the "
                    "Spectrogram Diffusion model with context, or a variant of it that the published layout "
                    "cannot hold"
                )
            node = node[part]
        return node

    def shape(self, module: str, name: str) -> tuple[int, ...]:
        """A parameter's shape, from the msgpack tree or the spec (the array is not read)."""
        key = f"{module}/{name}"
        if key not in self.shapes:
            leaf = self.leaf(module, name)
            if isinstance(leaf, np.ndarray):
                self.shapes[key] = tuple(leaf.shape)
            else:
                self.shapes[key] = tuple(self._zarray(leaf, key)[0]["shape"])
        return self.shapes[key]

    def array(self, module: str, name: str) -> np.ndarray:
        """A parameter as a float32 array (bfloat16 and float16 widened exactly)."""
        leaf = self.leaf(module, name)
        if isinstance(leaf, np.ndarray):
            return _float32(leaf, f"{module}/{name}")
        return _float32(self._read_zarr(leaf, f"{module}/{name}"), f"{module}/{name}")

    # ---- tensorstore's zarr arrays

    def _spec_path(self, spec: Any, name: str) -> str:
        if not isinstance(spec, dict):
            raise T5xError(f"{self.label}: parameter {name} is neither an array nor a tensorstore reference")
        if spec.get("driver") == "cast" and isinstance(spec.get("base"), dict):
            spec = spec["base"]
        if spec.get("driver") != "zarr":
            raise T5xError(
                f"{self.label}: parameter {name} is stored with tensorstore's {spec.get('driver')!r} driver; "
                "only zarr (what t5x writes) can be read"
            )
        kvstore = spec.get("kvstore") if isinstance(spec.get("kvstore"), dict) else {}
        path = kvstore.get("path") or spec.get("path")
        if not isinstance(path, str) or not path.strip("/"):
            raise T5xError(f"{self.label}: parameter {name}'s tensorstore reference has no path")
        path = path.rstrip("/")
        if path.startswith("/") or re.match(r"^[a-z]+://", path):  # absolute: the folder's own name counts
            path = PurePosixPath(path).name
        return path

    def _zarray(self, spec: Any, name: str) -> tuple[dict[str, Any], str]:
        path = self._spec_path(spec, name)
        raw = self.files.read(self.path(f"{path}/.zarray"))
        if raw is None:
            raise T5xError(
                f"{self.label} lacks the array of parameter {name} ({path}/.zarray is missing); the "
                "checkpoint is incomplete: copy or download it again"
            )
        try:
            meta = json.loads(raw)
            shape = [int(n) for n in meta["shape"]]
            chunks = [int(n) for n in meta["chunks"]]
        except (ValueError, KeyError, TypeError) as e:
            raise T5xError(
                f"{self.label}: {path}/.zarray is damaged ({e}); copy the checkpoint again"
            ) from None
        if meta.get("zarr_format", 2) != 2 or len(shape) != len(chunks) or any(c < 1 for c in chunks):
            raise T5xError(f"{self.label}: {path}/.zarray is not a zarr v2 array this reader knows")
        declared = spec.get("metadata", {}).get("shape") if isinstance(spec.get("metadata"), dict) else None
        if declared is not None and [int(n) for n in declared] != shape:
            raise T5xError(
                f"{self.label}: parameter {name} is {shape} in {path}/.zarray but {list(declared)} in the "
                "checkpoint file; the two come from different checkpoints"
            )
        return {**meta, "shape": shape, "chunks": chunks}, path

    def _read_zarr(self, spec: Any, name: str) -> np.ndarray:
        meta, path = self._zarray(spec, name)
        shape, chunks = meta["shape"], meta["chunks"]
        dtype = _zarr_dtype(meta.get("dtype"), f"{path}/.zarray")
        order = meta.get("order", "C")
        separator = meta.get("dimension_separator") or "."
        decompress = _decompressor(meta.get("compressor"), f"{self.label}: {path}")
        if meta.get("filters"):
            raise T5xError(f"{self.label}: {path} uses zarr filters, which this reader does not apply")
        out = np.empty(shape, dtype=dtype)
        chunk_bytes = math.prod(chunks) * dtype.itemsize
        grid = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
        for index in itertools.product(*(range(g) for g in grid)):
            key = separator.join(str(i) for i in index) or "0"
            raw = self.files.read(self.path(f"{path}/{key}"))
            region = tuple(
                slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True)
            )
            if raw is None:  # zarr: a chunk never written holds the fill value
                out[region] = _fill_value(meta.get("fill_value"), dtype)
                continue
            try:
                data = decompress(raw)
            except (zlib.error, OSError, EOFError, ValueError) as e:
                raise T5xError(
                    f"{self.label}: chunk {key} of {path} cannot be decompressed ({e}); the checkpoint is "
                    "damaged: copy or download it again"
                ) from None
            if len(data) != chunk_bytes:
                raise T5xError(
                    f"{self.label}: chunk {key} of {path} holds {len(data)} bytes, not {chunk_bytes}; the "
                    "checkpoint is damaged: copy or download it again"
                )
            block = np.frombuffer(data, dtype=dtype).reshape(chunks, order=order)
            out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
        return out


def _float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.float32:
        return array
    if (array.dtype.kind == "V" and array.dtype.itemsize == 2) or array.dtype == np.dtype("<u2"):  # bfloat16
        return (array.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise T5xError(f"parameter {name} is of type {array.dtype}, not floating point")


def _zarr_dtype(name: Any, where: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype("V2")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise T5xError(f"{where}: unknown array type {name!r}") from None
    if dtype.kind != "f":
        raise T5xError(f"{where}: the array is of type {dtype}, not floating point")
    return dtype


def _fill_value(value: Any, dtype: np.dtype) -> Any:
    if dtype.kind == "V":
        return np.zeros((), dtype=dtype)
    if value is None:
        return 0
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, value)


def _decompressor(compressor: Any, where: str) -> Callable[[bytes], bytes]:
    if compressor is None:
        return lambda raw: raw
    codec = compressor.get("id") if isinstance(compressor, dict) else None
    if codec in ("gzip", "zlib"):
        return lambda raw: zlib.decompress(raw, 32 + zlib.MAX_WBITS)  # either header
    if codec == "bz2":
        import bz2

        return bz2.decompress
    if codec == "lzma":
        import lzma

        return lzma.decompress
    raise T5xError(f"{where} is compressed with {codec!r}, which this reader cannot decompress (gzip, zlib)")


def require_msgpack():
    """The msgpack module, or a one-line error saying which extra to install."""
    try:
        import msgpack
    except ImportError:
        raise SpectrosynthError(
            f"reading a t5x checkpoint needs the msgpack package; {CONVERT_EXTRA}"
        ) from None
    return msgpack


def _msgpack_tree(data: bytes, label: str) -> Any:
    msgpack = require_msgpack()

    def ext_hook(code: int, payload: bytes) -> Any:
        if code in (1, 3):  # flax: an ndarray, or a numpy scalar packed as one
            shape, dtype, buffer = msgpack.unpackb(payload, raw=True)
            name = dtype.decode() if isinstance(dtype, bytes) else dtype
            array = np.frombuffer(buffer, dtype="<u2" if name == "bfloat16" else np.dtype(name))
            array = array.reshape(shape)
            if name == "bfloat16":
                array = _float32(array, "a bfloat16 array")
            return array if code == 1 else array[()]
        if code == 2:  # a complex number
            real, imag = msgpack.unpackb(payload)
            return complex(real, imag)
        return msgpack.ExtType(code, payload)

    try:
        tree = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for data that is not msgpack
        raise T5xError(f"{label} is not a t5x checkpoint file (not msgpack: {type(e).__name__})") from None
    return _unchunk(tree)


def _unchunk(node: Any) -> Any:
    """flax's chunked form of arrays over 1 GiB, back to arrays."""
    if isinstance(node, dict):
        if node.get("__msgpack_chunked_array__"):
            shape = [node["shape"][str(i)] for i in range(len(node["shape"]))]
            chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in node.items()}
    return node


def _steps_in(names: Iterator[str]) -> list[tuple[int, str]]:
    return sorted((int(m.group(1)), name) for name in names if (m := _STEP.fullmatch(name)))


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a t5x checkpoint: a checkpoint_N/ folder, its `checkpoint` file, a run's folder (its latest
    checkpoint_N/), or a zip of any of these (as the authors published them). config.gin is looked for
    beside checkpoint_N/ (the run's folder) and inside it."""
    given = Path(path).expanduser()
    if not given.exists():
        raise T5xError(f"no such file or folder: {given}")
    if given.is_file() and (zipfile.is_zipfile(given) or _looks_like_zip(given) or given.suffix == ".zip"):
        files: _Files = _ZipFiles(given)
        candidates = [PurePosixPath(n).parent for n in files.members if PurePosixPath(n).name == "checkpoint"]
        if not candidates:
            files.close()
            raise T5xError(
                f"{given} holds no t5x checkpoint (no checkpoint_N/checkpoint file in the archive)"
            )
        steps = [(int(m.group(1)) if (m := _STEP.fullmatch(c.name)) else -1, str(c)) for c in candidates]
        step, where = max(steps)
        where = "" if where == "." else where
        gins = [str(PurePosixPath(where).parent / "config.gin"), str(PurePosixPath(where) / "config.gin")]
        gins = [g.removeprefix("./") for g in gins]
        label = f"{given}:{where}" if where else str(given)
    else:
        if given.is_file():
            if given.name != "checkpoint":
                raise T5xError(
                    f"{given} is not a t5x checkpoint: give the checkpoint_N folder, its `checkpoint` file, "
                    "the run's folder or a zip of it"
                )
            given = given.parent
        if (given / "checkpoint").is_file():
            folder = given
        else:
            steps = _steps_in(p.name for p in given.iterdir() if (p / "checkpoint").is_file())
            if not steps:
                raise T5xError(
                    f"{given} is not a t5x checkpoint: it has no `checkpoint` file and no checkpoint_N/ "
                    "folder holding one"
                )
            folder = given / steps[-1][1]
        files = _FolderFiles(folder.parent)
        where, label = folder.name, str(folder)
        m = _STEP.fullmatch(folder.name)
        step = int(m.group(1)) if m else -1
        gins = ["config.gin", f"{folder.name}/config.gin"]
    try:
        data = files.read(f"{where}/checkpoint" if where else "checkpoint")
        contents = _msgpack_tree(data or b"", label)
        target = _target(contents, label)
        gin_label, gin = None, None
        for name in gins:
            text = files.read(name)
            if text is not None:
                gin_label = (
                    f"{files.name}:{name}" if isinstance(files, _ZipFiles) else str(Path(files.name) / name)
                )
                gin = parse_gin(text.decode("utf-8", errors="replace"))
                break
    except BaseException:
        files.close()
        raise
    return Checkpoint(files, where, label, step if step >= 0 else None, target, gin, gin_label)


def _target(contents: Any, label: str) -> dict[str, Any]:
    if not isinstance(contents, dict):
        raise T5xError(f"{label} is not a t5x checkpoint file (its msgpack holds no tree)")
    version = contents.get("version", 0)
    state = contents if version == 0 else contents.get("optimizer")
    target = state.get("target") if isinstance(state, dict) else None
    if isinstance(target, dict) and set(target) == {"params"}:
        target = target["params"]
    if not isinstance(target, dict):
        raise T5xError(f"{label} is not a t5x checkpoint file (it has no optimizer target: no parameters)")
    absent = [m for m in MODULES.values() if not isinstance(target.get(m), dict)]
    if absent:
        raise T5xError(
            f"{label} is a t5x checkpoint but not of the Spectrogram Diffusion model with context: it has no "
            f"{', '.join(absent)} (its parameters: {', '.join(sorted(target)[:5]) or 'none'})"
        )
    return target


# --------------------------------------------------------------------------------------------------------
# config.gin


def _statements(text: str) -> Iterator[tuple[int, str]]:
    """(indent, statement) for each gin statement: comments dropped, continued lines joined."""
    buffer, indent, depth = "", 0, 0
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if not buffer:
            indent = len(line) - len(line.lstrip())
        continued = stripped.endswith("\\")
        buffer += " " + stripped.rstrip("\\").strip()
        depth = sum(buffer.count(c) for c in "([{") - sum(buffer.count(c) for c in ")]}")
        if continued or depth > 0:
            continue
        yield indent, buffer.strip()
        buffer = ""
    if buffer:
        yield indent, buffer.strip()


def _gin_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a reference (@name(), %MACRO) or an expression gin knows and Python does not


def parse_gin(text: str) -> dict[str, Any]:
    """A gin file's bindings, as `gin.config_str()` writes them (`network.T5Config.emb_dim = 512`) or in
    blocks (`network.T5Config:` then indented `emb_dim = 512`): "selector.parameter" (with its scope, if any,
    as "scope/selector.parameter") or "MACRO" -> the value, a Python literal where it is one. Imports,
    includes and comments are skipped; `%MACRO` references are resolved."""
    bindings: dict[str, Any] = {}
    block = None
    for indent, statement in _statements(text):
        if statement.startswith(("import ", "from ", "include ")):
            block = None
            continue
        if statement.endswith(":") and "=" not in statement:
            block = statement[:-1].strip()
            continue
        if "=" not in statement:
            continue
        name, value = (s.strip() for s in statement.split("=", 1))
        if indent > 0 and block is not None:
            name = f"{block}.{name}"
        elif indent == 0:
            block = None
        bindings[name] = _gin_value(value)
    for name, value in bindings.items():
        if isinstance(value, str) and re.fullmatch(r"%[A-Za-z_][\w.]*", value):
            bindings[name] = bindings.get(value[1:], value)
    return bindings


def t5_config(gin: dict[str, Any]) -> dict[str, Any]:
    """The network's T5Config parameters among a gin file's bindings (unscoped)."""
    config = {}
    for name, value in gin.items():
        if "/" in name or "." not in name:
            continue
        selector, parameter = name.rsplit(".", 1)
        if selector.rsplit(".", 1)[-1] == "T5Config":
            config[parameter] = value
    return config


# --------------------------------------------------------------------------------------------------------
# Sizes


def _layers(node: dict[str, Any], module: str, label: str) -> int:
    indices = sorted(int(m.group(1)) for name in node if (m := _LAYER.fullmatch(name)))
    if not indices or indices != list(range(len(indices))):
        raise T5xError(f"{label}: {module} has no layers_0 ... layers_N-1 (found {indices[:5]})")
    return len(indices)


@dataclass(frozen=True)
class Sizes:
    """A checkpoint's sizes, from its arrays (and its heads from config.gin, the caller, or T5's 64)."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    vocab_size: int
    max_length: int  # notes encoder's token positions
    input_dims: int  # mel bins
    context_length: int  # context encoder's frames
    targets_length: int  # decoder's frames
    dropout_rate: float
    max_decoder_noise_time: float
    heads_from: str  # "config.gin", "--num-heads" or "T5's 64-wide heads"

    def configs(self) -> dict[str, dict[str, Any]]:
        """Every config.json of the published layout for these sizes, "scheduler" included."""
        configs = configs_for(
            self.d_model, self.encoder_layers, self.num_heads, self.d_kv, self.d_ff, self.dropout_rate
        )
        configs["notes_encoder"].update(max_length=self.max_length, vocab_size=self.vocab_size)
        configs["continuous_encoder"].update(
            input_dims=self.input_dims, targets_context_length=self.context_length
        )
        configs["decoder"].update(
            input_dims=self.input_dims,
            targets_length=self.targets_length,
            num_layers=self.decoder_layers,
            max_decoder_noise_time=float(self.max_decoder_noise_time),
        )
        return configs


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def checkpoint_sizes(ckpt: Checkpoint, num_heads: int | None = None) -> Sizes:
    """The sizes of the model in `ckpt`, read from its arrays' shapes and checked against its config.gin."""
    t, c, d = MODULES["notes_encoder"], MODULES["continuous_encoder"], MODULES["decoder"]
    vocab, d_model = ckpt.shape(t, "token_embedder/embedding")
    max_length = ckpt.shape(t, "Embed_0/embedding")[0]
    encoder_layers = _layers(ckpt.target[t], t, ckpt.label)
    context_layers = _layers(ckpt.target[c], c, ckpt.label)
    if context_layers != encoder_layers:
        raise T5xError(
            f"{ckpt.label}: the notes encoder has {encoder_layers} layers and the context encoder "
            f"{context_layers}; the published layout needs them equal"
        )
    decoder_layers = _layers(ckpt.target[d], d, ckpt.label)
    inner = ckpt.shape(t, "layers_0/attention/query/kernel")[1]
    d_ff = ckpt.shape(t, "layers_0/mlp/wi_0/kernel")[1]
    input_dims = ckpt.shape(c, "input_proj/kernel")[0]
    context_length = ckpt.shape(c, "Embed_0/embedding")[0]
    targets_length = ckpt.shape(d, "Embed_0/embedding")[0]

    gin = t5_config(ckpt.gin or {})
    lengths = (ckpt.gin or {}).get("TASK_FEATURE_LENGTHS")
    lengths = lengths if isinstance(lengths, dict) else {}
    said = {
        "emb_dim": (d_model, _int(gin.get("emb_dim"))),
        "num_encoder_layers": (encoder_layers, _int(gin.get("num_encoder_layers"))),
        "num_decoder_layers": (decoder_layers, _int(gin.get("num_decoder_layers"))),
        "mlp_dim": (d_ff, _int(gin.get("mlp_dim"))),
        "vocab_size": (vocab, _int(gin.get("vocab_size"))),
        "TASK_FEATURE_LENGTHS inputs": (max_length, _int(lengths.get("inputs"))),
        "TASK_FEATURE_LENGTHS targets_context": (context_length, _int(lengths.get("targets_context"))),
        "TASK_FEATURE_LENGTHS targets": (targets_length, _int(lengths.get("targets"))),
    }
    heads, head_dim = _int(gin.get("num_heads")), _int(gin.get("head_dim"))
    if heads is not None and head_dim is not None:
        said["num_heads x head_dim"] = (inner, heads * head_dim)
    wrong = [
        f"{name} {gin_value} where the arrays have {shape_value}"
        for name, (shape_value, gin_value) in said.items()
        if gin_value is not None and gin_value != shape_value
    ]
    if wrong:
        raise T5xError(
            f"{ckpt.gin_label} contradicts the checkpoint's arrays ({'; '.join(wrong)}); they are not from "
            "the same training run: put the run's own config.gin beside checkpoint_N/, or remove it"
        )
    activations = gin.get("mlp_activations")
    if activations is not None and tuple(activations) != ("gelu", "linear"):
        raise T5xError(
            f"{ckpt.gin_label}: mlp_activations {activations}: the published layout has gated GELU only"
        )
    style = gin.get("decoder_cross_attend_style")
    if style is not None and style != "concat_encodings":
        raise T5xError(
            f"{ckpt.gin_label}: decoder_cross_attend_style {style!r}: the published layout holds "
            "'concat_encodings' only"
        )

    if num_heads is not None:
        if heads is not None and heads != num_heads:
            raise T5xError(f"--num-heads {num_heads} contradicts {ckpt.gin_label} (num_heads {heads})")
        if num_heads < 1 or inner % num_heads:
            raise T5xError(f"--num-heads {num_heads} does not divide the attention width {inner}")
        heads, head_dim, heads_from = num_heads, inner // num_heads, "--num-heads"
    elif heads is not None and (head_dim is not None or inner % heads == 0):
        head_dim = head_dim if head_dim is not None else inner // heads
        heads_from = "config.gin"
    elif inner % T5_HEAD_DIM == 0:
        heads, head_dim, heads_from = inner // T5_HEAD_DIM, T5_HEAD_DIM, f"T5's {T5_HEAD_DIM}-wide heads"
    else:
        raise T5xError(
            f"{ckpt.label}: the attention width {inner} does not tell the number of heads, and there is no "
            "config.gin saying it; pass --num-heads N, or put the run's config.gin beside checkpoint_N/"
        )
    dropout = gin.get("dropout_rate", 0.1)
    noise_time = gin.get("max_decoder_noise_time", 2e4)
    return Sizes(
        d_model, encoder_layers, decoder_layers, heads, head_dim, d_ff, vocab, max_length, input_dims,
        context_length, targets_length,
        float(dropout) if isinstance(dropout, int | float) else 0.1,
        float(noise_time) if isinstance(noise_time, int | float) else 2e4,
        heads_from,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Converting


def check_parameters(ckpt: Checkpoint, component: str, config: dict[str, Any]) -> None:
    """Every parameter of a component is there with the shape `config` calls for, and nothing else is: from
    the msgpack tree and each array's .zarray, without reading the arrays."""
    module = MODULES[component]
    expected = weights.published_keys(component, config)
    names = flax_names(component, config["num_layers"])
    known = {flax for flax, _ in names}
    extra = sorted(p for p in _leaf_paths(ckpt.target[module]) if p not in known)
    if extra:
        raise T5xError(
            f"{ckpt.label}: {module} has parameters the published layout has no place for "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); it is a variant of the model "
            "that cannot be converted"
        )
    for flax, key in names:
        shape = ckpt.shape(module, flax)
        shape = shape[::-1] if flax.endswith("/kernel") else shape
        if tuple(shape) != tuple(expected[key]):
            raise T5xError(
                f"{ckpt.label}: {module}/{flax} is {list(shape)} (as {key}) where the model's other arrays "
                f"call for {list(expected[key])}; the checkpoint is inconsistent"
            )


def published_state(ckpt: Checkpoint, component: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A component's weights under the published names, float32 (`check_parameters` first)."""
    check_parameters(ckpt, component, config)
    state = {}
    for flax, key in flax_names(component, config["num_layers"]):
        array = ckpt.array(MODULES[component], flax)
        array = array.T if flax.endswith("/kernel") else array
        state[key] = torch.from_numpy(np.require(array, np.float32, ["C", "W"]))  # a copy if read-only
    return state


def _leaf_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, value in node.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and not _is_spec(value):
            yield from _leaf_paths(value, path + "/")
        else:
            yield path


def _is_spec(node: dict[str, Any]) -> bool:
    return "driver" in node and ("kvstore" in node or "path" in node or "base" in node)


def find_vocoder(vocoder: str | os.PathLike[str] | None) -> Path | None:
    """The vocoder a converted model ships with: a .onnx file, or a model folder's melgan/model.onnx (or a
    folder holding model.onnx); None for none."""
    if vocoder is None:
        return None
    path = Path(vocoder).expanduser()
    for candidate in (path, path / weights.MELGAN, path / "model.onnx"):
        if candidate.is_file():
            return candidate
    raise T5xError(
        f"--vocoder {vocoder}: no such .onnx file, nor a model folder with {weights.MELGAN}; give the "
        "published model's folder, its melgan/model.onnx, or none"
    )


def cached_published_vocoder() -> Path | None:
    """melgan/model.onnx of google/music-spectrogram-diffusion if the Hugging Face cache has it (no
    network), else None."""
    try:
        cached = weights._cached_snapshot(weights.DEFAULT_MODEL, None)
    except Exception:  # noqa: BLE001 - no usable cache
        return None
    return cached / weights.MELGAN if cached is not None and (cached / weights.MELGAN).is_file() else None


@dataclass(frozen=True)
class Converted:
    """What `convert` wrote."""

    folder: Path
    step: int | None
    sizes: Sizes
    parameters: int
    vocoder: Path | None  # the vocoder copied in, if any
    gin: str | None  # the config.gin the sizes were checked against


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def convert(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    vocoder: str | os.PathLike[str] | None = None,
    num_heads: int | None = None,
    force: bool = False,
    note: Callable[[str], None] = lambda message: None,
) -> Converted:
    """Convert a t5x checkpoint (`open_checkpoint`) into `out`, a model folder in the published layout:
    model_index.json, scheduler/scheduler_config.json, and per network config.json and
    diffusion_pytorch_model.safetensors (float32), as `spectrosynth.testing.write_checkpoint` writes them;
    with `vocoder` (a .onnx file or a model folder, `find_vocoder`) also melgan/model.onnx. The folder is
    written under a temporary name and renamed when complete; an existing `out` is an error unless `force`.
    `note` receives progress lines."""
    from safetensors.torch import save_file

    from spectrosynth.training.checkpoint import atomic_folder

    out = Path(out).expanduser()
    if out.exists() and not force:
        raise T5xError(f"{out} already exists; pass --force to replace it, or choose another folder")
    if not out.parent.is_dir():
        raise T5xError(f"{out.parent} does not exist; create it first")
    onnx = find_vocoder(vocoder)
    with open_checkpoint(checkpoint) as ckpt:
        sizes = checkpoint_sizes(ckpt, num_heads)
        configs = sizes.configs()
        parameters = sum(weights.parameter_count(c, configs[c]) for c in weights.COMPONENTS)
        for component in weights.COMPONENTS:  # every array there and of its size before anything is written
            check_parameters(ckpt, component, configs[component])
        note(
            f"converting {ckpt.label}{f' (step {ckpt.step})' if ckpt.step is not None else ''}: "
            f"d_model {sizes.d_model}, {sizes.encoder_layers}+{sizes.decoder_layers} layers, "
            f"{sizes.num_heads} heads x {sizes.d_kv} ({sizes.heads_from}), d_ff {sizes.d_ff}, "
            f"{parameters / 1e6:.1f} M parameters"
        )
        with atomic_folder(out) as part:
            _write_json(part / weights.MODEL_INDEX, model_index())
            _write_json(part / weights.SCHEDULER_CONFIG, configs["scheduler"])
            for component in weights.COMPONENTS:
                _write_json(part / component / "config.json", configs[component])
                state = published_state(ckpt, component, configs[component])
                save_file(state, part / component / weights.WEIGHTS_SAFETENSORS, metadata={"format": "pt"})
                del state
                weights.read_checked_state_dict(part, component)  # as every later load will read it
            if onnx is not None:
                (part / "melgan").mkdir()
                shutil.copyfile(onnx, part / weights.MELGAN)
        return Converted(out, ckpt.step, sizes, parameters, onnx, ckpt.gin_label)
