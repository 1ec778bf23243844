"""t5x checkpoints written the way t5x writes them, from published (diffusers) state dicts, for the
converter's tests (spectrosynth.t5x).

t5x (t5x/checkpoints.py, Checkpointer.save) writes each partitioned parameter with tensorstore as a zarr v2
array (gzip-compressed chunks) in checkpoint_N/, named by its path in the state dict with "/" as ".", and a
msgpack file `checkpoint` (flax.serialization) holding {"version": 3, "optimizer": {"target": ..., "state":
...}} where each such parameter is its tensorstore spec (kvstore path relative to checkpoint_N/) and the
rest are arrays (msgpack extension type 1) or numpy scalars (type 3). The parameter names are the flax
module names of the original network, as diffusers' scripts/convert_music_spectrogram_to_diffusers.py reads
them; the mapping here is written out separately from spectrosynth.t5x's on purpose.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectrosynth import weights
from spectrosynth.presets import model_index, scheduler_config

T5X_CHUNK_BYTES = 64 * 1024 * 1024  # t5x's _DESIRED_CHUNK_SIZE_BYTES

GIN_TEMPLATE = """\
from __gin__ import dynamic_registration
import __main__ as train_script
from music_spectrogram_diffusion.models.diffusion import network
from t5x import utils

# Macros:
# ==============================================================================
MODEL_DIR = 'gs://somewhere/{run}'
TASK_FEATURE_LENGTHS = \\
    {{'inputs': {inputs}, 'targets': {targets}, 'targets_context': {context}}}
TRAIN_STEPS = 500000

# Parameters for network.ContinuousContextTransformer:
# ==============================================================================
network.ContinuousContextTransformer.config = @network.T5Config()

# Parameters for network.T5Config:
# ==============================================================================
network.T5Config.context_positions = 'terminal_relative'
network.T5Config.decoder_cross_attend_style = 'concat_encodings'
network.T5Config.dropout_rate = 0.1
network.T5Config.dtype = 'float32'
network.T5Config.emb_dim = {emb_dim}
network.T5Config.head_dim = {head_dim}
network.T5Config.mlp_activations = ('gelu', 'linear')
network.T5Config.mlp_dim = {mlp_dim}
network.T5Config.num_decoder_layers = {decoder_layers}
network.T5Config.num_encoder_layers = {encoder_layers}
network.T5Config.num_heads = {num_heads}
network.T5Config.position_encoding = 'fixed_permuted_offset'
network.T5Config.vocab_size = @vocabularies.num_embeddings()
"""


def gin_for(configs: dict[str, dict[str, Any]], run: str = "run", **override: Any) -> str:
    """A config.gin as t5x saves it (gin.config_str()) for a model of these (published) configs."""
    notes, decoder = configs["notes_encoder"], configs["decoder"]
    values = {
        "run": run,
        "inputs": notes["max_length"],
        "targets": decoder["targets_length"],
        "context": configs["continuous_encoder"]["targets_context_length"],
        "emb_dim": notes["d_model"],
        "head_dim": notes["d_kv"],
        "mlp_dim": notes["d_ff"],
        "decoder_layers": decoder["num_layers"],
        "encoder_layers": notes["num_layers"],
        "num_heads": notes["num_heads"],
    }
    return GIN_TEMPLATE.format(**{**values, **override})


def _k(t: torch.Tensor) -> np.ndarray:
    """A torch Linear weight [out, in] as a flax DenseGeneral kernel [in, out]."""
    return np.ascontiguousarray(t.numpy().T)


def _a(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy())


def flax_tree(states: dict[str, dict[str, torch.Tensor]], layers: dict[str, int]) -> dict[str, Any]:
    """The original network's parameter tree (flax names) holding these published weights."""
    notes, context, dec = states["notes_encoder"], states["continuous_encoder"], states["decoder"]

    def encoder(s: dict[str, torch.Tensor], n: int) -> dict[str, Any]:
        tree: dict[str, Any] = {"Embed_0": {"embedding": _a(s["position_encoding.weight"])}}
        for i in range(n):
            p = f"encoders.{i}.layer"
            tree[f"layers_{i}"] = {
                "pre_attention_layer_norm": {"scale": _a(s[f"{p}.0.layer_norm.weight"])},
                "attention": {
                    "query": {"kernel": _k(s[f"{p}.0.SelfAttention.q.weight"])},
                    "key": {"kernel": _k(s[f"{p}.0.SelfAttention.k.weight"])},
                    "value": {"kernel": _k(s[f"{p}.0.SelfAttention.v.weight"])},
                    "out": {"kernel": _k(s[f"{p}.0.SelfAttention.o.weight"])},
                },
                "pre_mlp_layer_norm": {"scale": _a(s[f"{p}.1.layer_norm.weight"])},
                "mlp": {
                    w: {"kernel": _k(s[f"{p}.1.DenseReluDense.{w}.weight"])} for w in ("wi_0", "wi_1", "wo")
                },
            }
        tree["encoder_norm"] = {"scale": _a(s["layer_norm.weight"])}
        return tree

    token_encoder = {"token_embedder": {"embedding": _a(notes["token_embedder.weight"])}}
    token_encoder.update(encoder(notes, layers["notes_encoder"]))
    continuous_encoder = {"input_proj": {"kernel": _k(context["input_proj.weight"])}}
    continuous_encoder.update(encoder(context, layers["continuous_encoder"]))

    def attention(p: str) -> dict[str, Any]:
        names = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}
        return {flax: {"kernel": _k(dec[f"{p}.attention.{ours}.weight"])} for flax, ours in names.items()}

    decoder: dict[str, Any] = {
        "time_emb_dense0": {"kernel": _k(dec["conditioning_emb.0.weight"])},
        "time_emb_dense1": {"kernel": _k(dec["conditioning_emb.2.weight"])},
        "Embed_0": {"embedding": _a(dec["position_encoding.weight"])},
        "continuous_inputs_projection": {"kernel": _k(dec["continuous_inputs_projection.weight"])},
    }
    for i in range(layers["decoder"]):
        p = f"decoders.{i}.layer"
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": {"scale": _a(dec[f"{p}.0.layer_norm.weight"])},
            "FiLMLayer_0": {"DenseGeneral_0": {"kernel": _k(dec[f"{p}.0.FiLMLayer.scale_bias.weight"])}},
            "self_attention": attention(f"{p}.0"),
            "MultiHeadDotProductAttention_0": attention(f"{p}.1"),
            "pre_cross_attention_layer_norm": {"scale": _a(dec[f"{p}.1.layer_norm.weight"])},
            "pre_mlp_layer_norm": {"scale": _a(dec[f"{p}.2.layer_norm.weight"])},
            "FiLMLayer_1": {"DenseGeneral_0": {"kernel": _k(dec[f"{p}.2.film.scale_bias.weight"])}},
            "mlp": {
                w: {"kernel": _k(dec[f"{p}.2.DenseReluDense.{w}.weight"])} for w in ("wi_0", "wi_1", "wo")
            },
        }
    decoder["decoder_norm"] = {"scale": _a(dec["decoder_norm.weight"])}
    decoder["spec_out_dense"] = {"kernel": _k(dec["spec_out.weight"])}
    return {"token_encoder": token_encoder, "continuous_encoder": continuous_encoder, "decoder": decoder}


def choose_chunk_shape(write_shape: tuple[int, ...], target_elements: int) -> list[int]:
    """t5x's _choose_chunk_shape: divisors of each dimension, the largest reduced first."""
    dim_factors = [[i for i in range(1, size + 1) if size % i == 0] for size in write_shape]
    while np.prod([f[-1] for f in dim_factors]) > target_elements:
        biggest = max(range(len(write_shape)), key=lambda i: dim_factors[i][-1])
        dim_factors[biggest].pop()
    return [f[-1] for f in dim_factors]


def _walk(tree: dict[str, Any], prefix: tuple[str, ...] = ()):
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from _walk(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def write_t5x_checkpoint(
    run_dir: str | os.PathLike[str],
    target: dict[str, Any],
    step: int = 500000,
    gin: str | None = None,
    chunk_elements: int = T5X_CHUNK_BYTES // 4,
    dtype: str = "float32",
    in_msgpack: tuple[str, ...] = (),
    old_spec: bool = False,
) -> Path:
    """Write `target` (flax parameter tree of numpy arrays) as t5x does into run_dir/checkpoint_{step}/,
    with an Adafactor-like optimizer state beside it and `gin` as run_dir/config.gin. Returns the
    checkpoint_N folder. `chunk_elements`: t5x's chunk target (64 MiB of the type); smaller splits arrays
    into several chunks. `dtype` "bfloat16" stores the arrays as t5x's save_dtype does. Parameters whose
    '/'-joined path is in `in_msgpack` are kept in the msgpack file as arrays (as t5x keeps unpartitioned
    ones). `old_spec`: the spec as t5x wrote it before tensorstore 0.1.14 ("path" beside "kvstore")."""
    import msgpack
    import tensorstore as ts

    run_dir = Path(run_dir)
    folder = run_dir / f"checkpoint_{step}"
    folder.mkdir(parents=True)
    if gin is not None:
        (run_dir / "config.gin").write_text(gin)

    def stored(name: str, array: np.ndarray) -> dict[str, Any]:
        chunks = choose_chunk_shape(array.shape, chunk_elements)
        metadata = {"compressor": {"id": "gzip"}, "shape": list(array.shape), "chunks": chunks}
        where = {"driver": "file", "path": str(folder / name)}
        written = {"driver": "zarr", "dtype": dtype, "kvstore": where, "metadata": metadata}
        if dtype != "float32":  # t5x's save_dtype: written through tensorstore's cast driver
            written = {"driver": "cast", "dtype": "float32", "base": written}
        store = ts.open(written, create=True, open=True).result()
        store.write(array.astype(np.float32)).result()
        relative = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": name},
                    "metadata": metadata}  # fmt: skip
        spec = ts.Spec(relative).to_json()
        if old_spec:  # tensorstore < 0.1.14: the path beside the kvstore, as t5x still reads it
            spec["path"] = spec["kvstore"].pop("path")
        return spec

    written_target: dict[str, Any] = {}
    state: dict[str, Any] = {"step": np.int32(step), "param_states": {}}
    for i, (path, array) in enumerate(_walk(target)):
        name = "/".join(path)
        if name in in_msgpack:
            _set(written_target, path, np.asarray(array, dtype=np.float32))
        else:
            _set(written_target, path, stored("target." + ".".join(path), np.asarray(array)))
        if i % 7 == 0:  # Adafactor's factored second moments, and its unused slots, for a few parameters
            moments: dict[str, Any] = {"m": np.zeros((1,), np.float32), "v": np.zeros((1,), np.float32)}
            if array.ndim == 2:
                for slot, axis in (("v_row", 1), ("v_col", 0)):
                    moment = np.abs(array).mean(axis=axis).astype(np.float32)
                    moments[slot] = stored("state.param_states." + ".".join(path) + f".{slot}", moment)
            _set(state["param_states"], path, moments)

    def ext(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            payload = msgpack.packb((value.shape, value.dtype.name, value.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(1, payload)
        if isinstance(value, np.generic):
            array = np.asarray(value)
            payload = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(3, payload)
        return value

    contents = {"version": 3, "optimizer": {"target": written_target, "state": state}}
    (folder / "checkpoint").write_bytes(msgpack.packb(contents, default=ext, strict_types=True))
    return folder


def zip_run(run_dir: str | os.PathLike[str], zip_path: str | os.PathLike[str], stored: bool = False) -> Path:
    """The run folder zipped as the authors published theirs: RUN/config.gin, RUN/checkpoint_N/..."""
    run_dir, zip_path = Path(run_dir), Path(zip_path)
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(zip_path, "w", method) as z:
        for path in sorted(run_dir.rglob("*")):
            z.write(path, str(Path(run_dir.name) / path.relative_to(run_dir)))
    return zip_path


def assert_converted(folder: Path, configs: dict, states: dict) -> None:
    """The folder holds exactly these weights and the configs as spectrosynth.testing writes them."""
    assert weights.missing_files(folder, vocoder=False) == []
    assert json.loads((folder / weights.MODEL_INDEX).read_text()) == model_index()
    assert json.loads((folder / weights.SCHEDULER_CONFIG).read_text()) == scheduler_config()
    for component in weights.COMPONENTS:
        assert json.loads((folder / component / "config.json").read_text()) == configs[component]
        got = weights.read_state_dict(folder, component)
        assert sorted(got) == sorted(states[component])
        for key, tensor in states[component].items():
            assert got[key].dtype == torch.float32
            assert torch.equal(got[key], tensor), f"{component}: {key}"
