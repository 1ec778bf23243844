"""The full-size vocoder stand-in (spectrosynth.testing.write_soundstream_vocoder: SoundStream's decoder with
random weights) and the streaming context its receptive field calls for (vocoder.MODEL_CONTEXT).

The ONNX checks use a narrow stand-in (C = 4): the same layers and receptive field as the published size's,
at 130 k parameters instead of 14.9 M, so they run in a second.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrosynth import testing
from spectrosynth.vocoder import MODEL_CONTEXT, StreamingVocoder, Vocoder

NARROW = 4  # channels C of the narrow stand-in
PUBLISHED_PARAMETERS = (
    14.9e6  # SoundStream's decoder at the size of the published melgan/model.onnx (60.5 MB)
)


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "non-causal"])
def narrow(request, tmp_path_factory) -> tuple[Path, bool]:
    causal = request.param
    path = tmp_path_factory.mktemp("standin") / "model.onnx"
    return testing.write_soundstream_vocoder(path, seed=3, channels=NARROW, causal=causal), causal


def log_mel(frames: int, batch: int | None = None, seed: int = 0) -> np.ndarray:
    """Random log-mel frames over the model's range, [ln 1e-5, 4]."""
    shape = (frames, 128) if batch is None else (batch, frames, 128)
    return np.random.default_rng(seed).uniform(np.log(1e-5), 4.0, shape).astype(np.float32)


def test_onnx_signature_is_the_published_one(narrow):
    import onnx

    path, _ = narrow
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "input_features"
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[2] == 128 and all(isinstance(d, str) for d in dims[:2]), dims  # dynamic batch and frames
    assert len(out.type.tensor_type.shape.dim) == 2
    assert {"ConvTranspose", "Conv", "Elu"} <= {node.op_type for node in graph.node}


@pytest.mark.parametrize("frames", [1, 7, 120])
def test_output_shape_and_level(narrow, frames):
    import onnxruntime as ort

    path, causal = narrow
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mel = log_mel(frames, batch=2)
    (audio,) = session.run(None, {"input_features": mel})
    assert audio.shape == (2, frames * 320) and audio.dtype == np.float32
    assert np.isfinite(audio).all()
    if frames == 120:
        assert 0.05 < audio.std() < 1.0 and np.abs(audio).max() < 5.0  # of order 0.1 to 1
        assert not np.allclose(audio[0], audio[1])  # the rows are vocoded from their own spectrograms
    model = testing.soundstream_decoder(NARROW, seed=3, causal=causal)
    with torch.no_grad():
        np.testing.assert_allclose(audio, model(torch.from_numpy(mel)).numpy(), atol=1e-5, rtol=0)


def test_default_size_is_the_published_files():
    with torch.device("meta"):  # counts the parameters without making 14.9 M random numbers
        model = testing.SoundStreamDecoder()
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == 14_859_265
    assert abs(parameters / PUBLISHED_PARAMETERS - 1) < 0.1
    assert abs(parameters * 4 / 60.5e6 - 1) < 0.1  # float32 bytes against the published file's


def test_same_seed_same_weights_and_seeds_differ():
    a, b, c = (testing.soundstream_decoder(NARROW, seed=s) for s in (1, 1, 2))
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
        assert not torch.equal(sa[name], sc[name]), name


@pytest.mark.parametrize("causal,field", [(True, (20, 0)), (False, (10, 10))])
def test_receptive_field_is_what_the_layers_say_and_what_changes(causal, field):
    """The receptive field the layers give (frames before and after a frame whose audio they shape) is the
    one measured: a change in one frame changes exactly the audio of the frames that read it."""
    model = testing.soundstream_decoder(NARROW, seed=0, causal=causal).double()  # rounding far below 1e-12
    assert model.receptive_field() == field
    mel = torch.from_numpy(log_mel(80)).double()[None]
    frame = 40
    changed = mel.clone()
    changed[0, frame] += 3.0
    with torch.no_grad():
        difference = (model(changed) - model(mel)).abs().reshape(80, 320).amax(dim=1)
    touched = torch.nonzero(difference > 1e-12).flatten()
    before, after = field
    assert (int(touched.min()), int(touched.max())) == (frame - after, frame + before)
    assert MODEL_CONTEXT >= max(field)  # so the default context covers it


def test_vocoder_loads_it(narrow):
    path, _ = narrow
    vocoder = Vocoder(path)
    mel = log_mel(50, batch=2)
    assert vocoder(mel).shape == (2, 50 * 320)
    np.testing.assert_allclose(vocoder(mel[1]), vocoder(mel)[1], atol=1e-6, rtol=0)


def streamed(vocoder: Vocoder, mel: np.ndarray, context: int | None = None) -> np.ndarray:
    """As the renderer vocodes: 256-frame chunks, fed in pieces."""
    stream = StreamingVocoder(vocoder) if context is None else StreamingVocoder(vocoder, context=context)
    pieces = [a for i in range(0, len(mel), 100) for a in stream.feed(mel[i : i + 100])]
    return np.concatenate([*pieces, *stream.finish()])


def test_streamed_equals_whole_at_the_default_context(narrow):
    path, causal = narrow
    vocoder = Vocoder(path)
    assert StreamingVocoder(vocoder).context == MODEL_CONTEXT == Vocoder.context
    mel = log_mel(256 * 3 + 37, seed=1)
    whole = vocoder(mel)
    audio = streamed(vocoder, mel)
    assert audio.shape == whole.shape
    assert np.abs(audio - whole).max() <= 1e-5 * np.abs(whole).max()
    # ... and the context is needed: with 8 frames the chunk edges differ
    assert np.abs(streamed(vocoder, mel, context=8) - whole).max() > 1e-3 * np.abs(whole).max()


def test_griffin_lim_keeps_its_own_context():
    from spectrosynth.griffin_lim import GriffinLimVocoder

    assert StreamingVocoder(GriffinLimVocoder(8)).context == GriffinLimVocoder.context == 64
    assert StreamingVocoder(object(), context=5).context == 5  # an explicit context wins


def test_checkpoint_with_the_soundstream_vocoder(tmp_path, monkeypatch):
    """`python -m spectrosynth.testing FOLDER --vocoder soundstream` puts the stand-in in melgan/ (here a
    narrow one: the published size takes 3 s and 59 MB)."""
    narrow_writer = functools.partial(testing.write_soundstream_vocoder, channels=NARROW)
    monkeypatch.setattr(testing, "write_soundstream_vocoder", narrow_writer)
    testing.main([str(tmp_path / "model"), "--vocoder", "soundstream"])
    vocoder = Vocoder(tmp_path / "model" / "melgan" / "model.onnx")
    assert {"ConvTranspose"} <= {n.op_type for n in _onnx_nodes(tmp_path / "model" / "melgan" / "model.onnx")}
    assert vocoder(log_mel(3)).shape == (3 * 320,)
    with pytest.raises(ValueError, match="vocoder must be"):
        testing.write_checkpoint(tmp_path / "other", vocoder="melgan")


def _onnx_nodes(path: Path):
    import onnx

    return onnx.load(str(path)).graph.node


def _published_melgan() -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        from spectrosynth.weights import DEFAULT_MODEL, MELGAN

        found = try_to_load_from_cache(DEFAULT_MODEL, MELGAN)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


@pytest.mark.skipif(_published_melgan() is None, reason="the published melgan/model.onnx is not in the cache")
def test_published_vocoder_streams_exactly_at_the_default_context():
    """Where the published vocoder has been downloaded: its streamed audio equals its whole audio at the
    default context, which was chosen from the stand-in's architecture (inferred, not known)."""
    vocoder = Vocoder(_published_melgan())
    mel = log_mel(256 * 2 + 37, seed=2)
    whole = vocoder(mel)
    assert np.abs(streamed(vocoder, mel) - whole).max() <= 1e-5 * np.abs(whole).max()
