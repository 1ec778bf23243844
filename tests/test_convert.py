"""`spectrosynth convert` (spectrosynth.t5x): t5x checkpoints written as t5x writes them (with tensorstore,
tests/t5x_helpers.py) from the random stand-ins' weights convert back to exactly those weights, load
strictly in diffusers and render; bad input is one line and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrosynth import t5x, weights
from spectrosynth.presets import configs_for, model_configs
from spectrosynth.testing import random_state_dict

pytest.importorskip("msgpack")
pytest.importorskip("tensorstore")

from t5x_helpers import assert_converted, flax_tree, gin_for, write_t5x_checkpoint, zip_run  # noqa: E402

COMPONENTS = weights.COMPONENTS
WALTZ = Path(__file__).parent / "data" / "midi" / "nottingham" / "waltzes1.mid"


def states_of(configs: dict, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    return {c: random_state_dict(c, configs[c], seed=seed) for c in COMPONENTS}


def tree_of(configs: dict, states: dict) -> dict:
    return flax_tree(states, {c: configs[c]["num_layers"] for c in COMPONENTS})


def spectrosynth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spectrosynth", *args], capture_output=True, text=True, env=env, timeout=600
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrosynth: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# The tiny size, every form


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model written as a t5x run (several chunks per array, an optimizer state beside the
    parameters, config.gin as t5x saves it) and zipped, as the authors published theirs."""
    root = tmp_path_factory.mktemp("t5x-tiny")
    configs = model_configs("tiny")
    states = states_of(configs)
    run = root / "tiny_with_context"
    checkpoint = write_t5x_checkpoint(
        run, tree_of(configs, states), gin=gin_for(configs), chunk_elements=4096
    )
    archive = zip_run(run, root / "tiny_with_context.zip")
    return {"configs": configs, "states": states, "run": run, "checkpoint": checkpoint, "zip": archive}


@pytest.mark.parametrize("form", ["checkpoint_dir", "run_dir", "checkpoint_file", "zip"])
def test_a_t5x_checkpoint_converts_back_to_exactly_its_weights(tiny, tmp_path, form):
    source = {"checkpoint_dir": tiny["checkpoint"], "run_dir": tiny["run"],
              "checkpoint_file": tiny["checkpoint"] / "checkpoint", "zip": tiny["zip"]}[form]  # fmt: skip
    notes = []
    result = t5x.convert(source, tmp_path / "out", note=notes.append)
    assert_converted(tmp_path / "out", tiny["configs"], tiny["states"])
    assert (
        result.step == 500000
        and result.sizes.heads_from == "config.gin"
        and result.gin.endswith("config.gin")
    )
    assert result.parameters == sum(weights.parameter_count(c, tiny["configs"][c]) for c in COMPONENTS)
    assert "2 heads x 24" in notes[0] and "step 500000" in notes[0]
    assert not (tmp_path / "out" / "melgan").exists()  # no vocoder asked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else left beside it


def test_the_cli_writes_the_folder_with_the_vocoder_given(tiny, tiny_model, tmp_path):
    out = tmp_path / "converted"
    result = spectrosynth("convert", str(tiny["zip"]), str(out), "--vocoder", str(tiny_model))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "wrote" in result.stderr and f"with the vocoder of {tiny_model / weights.MELGAN}" in result.stderr
    assert (out / weights.MELGAN).read_bytes() == (tiny_model / weights.MELGAN).read_bytes()
    assert weights.verify_model(out) > 0  # what `spectrosynth download` checks
    assert weights.resolve_model(str(out)) == out
    assert_converted(out, tiny["configs"], tiny["states"])


def test_the_converted_model_renders(tiny, tiny_model, tmp_path):
    out = t5x.convert(tiny["checkpoint"], tmp_path / "model", vocoder=tiny_model).folder
    wav = tmp_path / "waltz.wav"
    options = [
        "--model",
        str(out),
        "--steps",
        "2",
        "--duration",
        "3",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    result = spectrosynth("render", str(WALTZ), str(wav), *options)
    assert result.returncode == 0, result.stderr
    import soundfile

    audio, rate = soundfile.read(wav)
    assert rate == 16000 and len(audio) > 3 * 16000 and np.isfinite(audio).all()


@pytest.mark.reference
def test_diffusers_loads_the_converted_model_strictly(tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import T5FilmDecoder
        from diffusers.pipelines.deprecated.spectrogram_diffusion import (
            SpectrogramContEncoder,
            SpectrogramNotesEncoder,
        )
    classes = {
        "notes_encoder": SpectrogramNotesEncoder,
        "continuous_encoder": SpectrogramContEncoder,
        "decoder": T5FilmDecoder,
    }
    out = t5x.convert(tiny["zip"], tmp_path / "model").folder
    for component, cls in classes.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref, info = cls.from_pretrained(out, subfolder=component, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        loaded = ref.state_dict()
        for key, tensor in tiny["states"][component].items():
            assert torch.equal(loaded[key], tensor), f"{component}: {key}"


# ---------------------------------------------------------------------------------------------------------
# Variants of the format t5x has written


def test_bfloat16_arrays_widen_exactly(tmp_path):
    """t5x's save_dtype bfloat16: tensorstore's bfloat16 arrays, widened to float32 exactly."""
    configs = model_configs("tiny")
    states = states_of(configs, seed=2)
    write_t5x_checkpoint(tmp_path / "run", tree_of(configs, states), gin=gin_for(configs), dtype="bfloat16")
    meta = json.loads(
        (tmp_path / "run/checkpoint_500000/target.decoder.spec_out_dense.kernel/.zarray").read_text()
    )
    assert meta["dtype"] == "bfloat16"
    t5x.convert(tmp_path / "run", tmp_path / "out")
    rounded = {c: {k: v.to(torch.bfloat16).float() for k, v in s.items()} for c, s in states.items()}
    assert_converted(tmp_path / "out", configs, rounded)


def test_specs_of_old_tensorstore_and_arrays_kept_in_the_msgpack_file(tmp_path):
    """t5x before tensorstore 0.1.14 put the path beside the kvstore; unpartitioned parameters are the
    arrays themselves in the msgpack file."""
    configs = model_configs("tiny")
    states = states_of(configs, seed=3)
    in_msgpack = (
        "decoder/decoder_norm/scale",
        "token_encoder/layers_1/mlp/wo/kernel",
        "decoder/Embed_0/embedding",
    )
    write_t5x_checkpoint(tmp_path / "run", tree_of(configs, states), gin=gin_for(configs), old_spec=True,
                         in_msgpack=in_msgpack)  # fmt: skip
    assert not (tmp_path / "run/checkpoint_500000/target.decoder.decoder_norm.scale").exists()
    t5x.convert(tmp_path / "run", tmp_path / "out")
    assert_converted(tmp_path / "out", configs, states)


def test_without_config_gin_heads_of_64_are_assumed_or_given(tmp_path):
    configs = configs_for(32, 1, 2, 64, 48)  # an attention width of 128: two heads of 64
    states = states_of(configs, seed=4)
    write_t5x_checkpoint(tmp_path / "run", tree_of(configs, states))
    result = t5x.convert(tmp_path / "run", tmp_path / "out")
    assert result.sizes.heads_from == "T5's 64-wide heads" and result.gin is None
    assert_converted(tmp_path / "out", configs, states)
    # 4 heads of 32 instead: the arrays cannot tell, --num-heads says it
    t5x.convert(tmp_path / "run", tmp_path / "out4", num_heads=4)
    assert weights.read_config(tmp_path / "out4", "decoder")["num_heads"] == 4
    assert weights.read_config(tmp_path / "out4", "decoder")["d_kv"] == 32


def test_zarr_chunks_at_the_edges_and_chunks_never_written(tmp_path):
    """zarr v2 as tensorstore writes it: edge chunks are stored whole (padded), and a chunk that holds only
    the fill value may be absent."""
    import tensorstore as ts

    folder = tmp_path / "checkpoint_1"
    value = np.arange(12 * 15, dtype=np.float32).reshape(12, 15) - 50
    value[5:10, 7:14] = 0  # exactly chunk (1, 1): not written
    metadata = {"shape": [12, 15], "chunks": [5, 7], "dtype": "<f4", "fill_value": 0}
    metadata["compressor"] = {"id": "zlib"}
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(folder / "a")}, "metadata": metadata}
    store = ts.open(spec, create=True).result()
    store.write(value).result()
    assert not (folder / "a" / "1.1").exists() and (folder / "a" / "2.2").exists()
    ckpt = t5x.Checkpoint(t5x._FolderFiles(tmp_path), "checkpoint_1", "test", 1, {})
    relative = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": "a/"},
        "metadata": {"shape": [12, 15]},
    }
    assert np.array_equal(ckpt._read_zarr(relative, "a"), value)


def test_gin_in_blocks_and_as_t5x_saves_it():
    block = """
include 'music_spectrogram_diffusion/gin/models/diffusion/context/t5_base.gin'
from music_spectrogram_diffusion.models.diffusion import network

TASK_FEATURE_LENGTHS = {
    "inputs": 2048,
    "targets": 256,
}
network.T5Config:
  emb_dim = 512  # T5.1.1 Small
  num_heads = 6
  mlp_activations = ('gelu', 'linear')
  vocab_size = @vocabularies.num_embeddings()
LENGTH = 7
other.Thing.length = %LENGTH
"""
    gin = t5x.parse_gin(block)
    assert gin["TASK_FEATURE_LENGTHS"] == {"inputs": 2048, "targets": 256}
    assert t5x.t5_config(gin) == {"emb_dim": 512, "num_heads": 6, "mlp_activations": ("gelu", "linear"),
                                  "vocab_size": "@vocabularies.num_embeddings()"}  # fmt: skip
    assert gin["other.Thing.length"] == 7
    saved = t5x.parse_gin(gin_for(model_configs("small")))
    assert t5x.t5_config(saved)["head_dim"] == 64 and t5x.t5_config(saved)["num_encoder_layers"] == 8
    assert saved["TASK_FEATURE_LENGTHS"] == {"inputs": 2048, "targets": 256, "targets_context": 256}


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing half-written


def _nothing_left(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert not any(p.name.startswith(f".{name}") for p in parent.iterdir()), list(parent.iterdir())


def _copy_run(tiny, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    return run


def test_not_a_t5x_checkpoint(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    (tmp_path / "checkpoint").write_bytes(b"\xc1 not msgpack")
    (tmp_path / "plain.zip").write_bytes(zipfile_bytes({"readme.txt": b"nothing"}))
    out = tmp_path / "outs"
    out.mkdir()
    for source, says in [
        (folder, "is not a t5x checkpoint: it has no `checkpoint` file"),
        (folder / "notes.txt", "is not a t5x checkpoint"),
        (tmp_path / "checkpoint", "is not a t5x checkpoint file (not msgpack"),
        (tmp_path / "plain.zip", "holds no t5x checkpoint"),
        (tmp_path / "absent", "no such file or folder"),
    ]:
        message = one_line_error(spectrosynth("convert", str(source), str(out / "out")))
        assert says in message, message
        _nothing_left(out)


def zipfile_bytes(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_a_msgpack_tree_of_another_model(tmp_path):
    import msgpack

    folder = tmp_path / "checkpoint_10"
    folder.mkdir()
    tree = {"version": 3, "optimizer": {"target": {"encoder": {}, "decoder": {}}, "state": {}}}
    (folder / "checkpoint").write_bytes(msgpack.packb(tree))
    message = one_line_error(spectrosynth("convert", str(folder), str(tmp_path / "out")))
    assert "not of the Spectrogram Diffusion model with context: it has no token_encoder" in message
    _nothing_left(tmp_path)


def test_a_truncated_zip(tiny, tmp_path):
    data = tiny["zip"].read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    message = one_line_error(spectrosynth("convert", str(cut), str(tmp_path / "out")))
    assert "is not a complete zip archive" in message and "download it again" in message
    _nothing_left(tmp_path)


def test_a_damaged_member_of_the_zip(tiny, tmp_path):
    damaged = tmp_path / "damaged.zip"
    data = bytearray(tiny["zip"].read_bytes())
    with zipfile.ZipFile(tiny["zip"]) as z:
        info = z.getinfo("tiny_with_context/checkpoint_500000/target.decoder.spec_out_dense.kernel/0.0")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    message = one_line_error(spectrosynth("convert", str(damaged), str(tmp_path / "out"), "--quiet"))
    assert "damaged" in message
    _nothing_left(tmp_path)


def test_a_missing_array(tiny, tmp_path):
    run = _copy_run(tiny, tmp_path)
    shutil.rmtree(run / "checkpoint_500000" / "target.decoder.layers_1.mlp.wo.kernel")
    message = one_line_error(spectrosynth("convert", str(run), str(tmp_path / "out")))
    assert "lacks the array of parameter decoder/layers_1/mlp/wo/kernel" in message
    _nothing_left(tmp_path)


def test_a_damaged_chunk(tiny, tmp_path):
    run = _copy_run(tiny, tmp_path)
    chunk = run / "checkpoint_500000" / "target.token_encoder.layers_0.mlp.wi_1.kernel" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    message = one_line_error(spectrosynth("convert", str(run), str(tmp_path / "out"), "--quiet"))
    assert "chunk 0.0 of target.token_encoder.layers_0.mlp.wi_1.kernel" in message
    _nothing_left(tmp_path)


@pytest.mark.parametrize(
    "override,says",
    [({"emb_dim": 64}, "emb_dim 64 where the arrays have 32"),
     ({"num_heads": 3}, "num_heads x head_dim 72 where the arrays have 48"),
     ({"decoder_layers": 4}, "num_decoder_layers 4 where the arrays have 2"),
     ({"inputs": 1024}, "TASK_FEATURE_LENGTHS inputs 1024 where the arrays have 2048")],
)  # fmt: skip
def test_sizes_that_contradict_the_gin_file(tiny, tmp_path, override, says):
    run = _copy_run(tiny, tmp_path)
    (run / "config.gin").write_text(gin_for(tiny["configs"], **override))
    message = one_line_error(spectrosynth("convert", str(run), str(tmp_path / "out")))
    assert "contradicts the checkpoint's arrays" in message and says in message, message
    _nothing_left(tmp_path)


def test_heads_the_arrays_cannot_tell(tiny, tmp_path):
    run = _copy_run(tiny, tmp_path)
    (run / "config.gin").unlink()
    message = one_line_error(spectrosynth("convert", str(run), str(tmp_path / "out")))
    assert "does not tell the number of heads" in message and "--num-heads" in message
    _nothing_left(tmp_path)
    result = spectrosynth("convert", str(run), str(tmp_path / "out"), "--num-heads", "2")
    assert result.returncode == 0, result.stderr
    assert_converted(tmp_path / "out", tiny["configs"], tiny["states"])


def test_an_existing_out_dir_needs_force(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    message = one_line_error(spectrosynth("convert", str(tiny["zip"]), str(out)))
    assert "already exists; pass --force" in message
    assert (out / "mine.txt").read_text() == "keep me"
    result = spectrosynth("convert", str(tiny["zip"]), str(out), "--force", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert not (out / "mine.txt").exists()
    assert_converted(out, tiny["configs"], tiny["states"])


def test_a_vocoder_that_is_not_there(tiny, tmp_path):
    message = one_line_error(spectrosynth("convert", str(tiny["zip"]), str(tmp_path / "out"), "--vocoder",
                                          str(tmp_path / "nothing.onnx")))  # fmt: skip
    assert "no such .onnx file" in message
    _nothing_left(tmp_path)


def test_without_msgpack_it_says_which_extra(tiny, tmp_path):
    code = (
        "import sys; sys.modules['msgpack'] = None; sys.argv = ['spectrosynth', 'convert', *sys.argv[1:]]; "
        "from spectrosynth.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tiny["zip"]), str(tmp_path / "out")],
                            capture_output=True, text=True)  # fmt: skip
    message = one_line_error(result)
    assert "needs the msgpack package; pip install 'spectrosynth[convert]'" in message
    _nothing_left(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# The authors' small size (104 M parameters)


@pytest.mark.slow
def test_the_small_size_converts_back_exactly_from_folder_and_zip(tmp_path):
    configs = model_configs("small")
    assert (configs["decoder"]["d_model"], configs["decoder"]["num_heads"], configs["decoder"]["d_kv"]) == (
        512,
        6,
        64,
    )
    states = states_of(configs, seed=5)
    run = tmp_path / "small_with_context"
    write_t5x_checkpoint(run, tree_of(configs, states), gin=gin_for(configs, "small_with_context"))
    archive = zip_run(run, tmp_path / "small_with_context.zip", stored=True)
    result = t5x.convert(run, tmp_path / "from-folder")
    assert round(result.parameters / 1e6, 1) == 104.0
    assert_converted(tmp_path / "from-folder", configs, states)
    shutil.rmtree(tmp_path / "from-folder")
    shutil.rmtree(run)
    t5x.convert(archive, tmp_path / "from-zip")
    assert_converted(tmp_path / "from-zip", configs, states)
