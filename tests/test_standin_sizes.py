"""The random stand-ins for everyone: `python -m spectrosynth.testing DIR` with spectrosynth's runtime
dependencies alone (no onnx: the one-convolution vocoder's protobuf is written directly), and the authors'
small size beside tiny and base."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spectrosynth import weights
from spectrosynth.presets import SIZES, model_configs
from spectrosynth.testing import MEL_BINS, SAMPLES_PER_FRAME, write_checkpoint, write_vocoder
from spectrosynth.training.model import size_configs

#: Modules of the extras (test, train, evaluate, convert, ray) that a plain `pip install spectrosynth` lacks.
EXTRAS = ("onnx", "diffusers", "transformers", "tensorflow", "note_seq", "pyarrow", "peft", "matplotlib",
          "tensorboard", "msgpack", "tensorstore", "ray", "librosa", "mir_eval", "basic_pitch")  # fmt: skip


def without_extras(*args: str) -> subprocess.CompletedProcess:
    """`python -m spectrosynth.testing ARGS` in a process where importing any extra fails, as it would after
    a plain pip install."""
    code = (
        f"import sys, runpy\nfor name in {EXTRAS!r}:\n    sys.modules[name] = None\n"
        "sys.argv = ['python -m spectrosynth.testing', *sys.argv[1:]]\n"
        "runpy.run_module('spectrosynth.testing', run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_python_m_testing_needs_no_extra(tmp_path):
    result = without_extras(str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "model")
    assert weights.verify_model(tmp_path / "model") > 0  # the vocoder included, opened by onnxruntime


def test_the_soundstream_stand_in_without_onnx_says_so_and_writes_nothing(tmp_path):
    result = without_extras(str(tmp_path / "model"), "--vocoder", "soundstream")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "needs the onnx package" in result.stderr
    assert not (tmp_path / "model").exists()


def test_the_vocoder_written_without_onnx_is_byte_for_byte_what_onnx_writes(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    path = write_vocoder(tmp_path / "model.onnx", seed=11)
    rng = np.random.default_rng(11)  # the weights as write_vocoder draws them
    weight = (rng.standard_normal((SAMPLES_PER_FRAME, MEL_BINS, 5)) * 0.05 / np.sqrt(MEL_BINS * 5)).astype(
        np.float32
    )
    bias = (rng.standard_normal(SAMPLES_PER_FRAME) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["input_features"], ["channels_first"], perm=[0, 2, 1]),
        helper.make_node(
            "Conv", ["channels_first", "conv_weight", "conv_bias"], ["conv"], kernel_shape=[5], pads=[2, 2]
        ),  # fmt: skip
        helper.make_node("Tanh", ["conv"], ["samples"]),
        helper.make_node("Transpose", ["samples"], ["frames_first"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["frames_first", "flat_shape"], ["waveform"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mel_decoder",
        inputs=[
            helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", "frames", MEL_BINS])
        ],
        outputs=[helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        initializer=[
            numpy_helper.from_array(weight, "conv_weight"),
            numpy_helper.from_array(bias, "conv_bias"),
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spectrosynth"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert path.read_bytes() == model.SerializeToString()


def test_the_small_size_is_the_authors_and_one_definition():
    configs = model_configs("small")
    decoder = configs["decoder"]
    assert SIZES["small"] == (512, 8, 6, 64, 1024)  # T5.1.1 Small: emb_dim, layers, heads, head_dim, mlp_dim
    assert (decoder["d_model"], decoder["num_layers"], decoder["num_heads"], decoder["d_kv"]) == (
        512,
        8,
        6,
        64,
    )
    assert size_configs("small") == configs  # training's --config small is the same definition
    counts = {c: weights.parameter_count(c, configs[c]) for c in weights.COMPONENTS}
    assert [round(n / 1e6, 2) for n in counts.values()] == [20.72, 19.08, 64.24]  # reference-spec.md §3


@pytest.mark.slow
def test_a_small_stand_in_in_the_published_layout(tmp_path):
    folder = write_checkpoint(tmp_path / "small", "small", weights_format="safetensors")
    assert weights.verify_model(folder) > 416e6
    assert weights.read_config(folder, "decoder")["d_model"] == 512
