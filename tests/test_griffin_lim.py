"""The Griffin-Lim vocoder (spectrosynth.griffin_lim, `--vocoder griffin-lim`): its STFT is the front end's,
its reconstructions re-analyse closer to the input with more iterations, it has the ONNX vocoder's call and
lengths, streams exactly, and loads for model folders without melgan/model.onnx. Offline, on the CPU."""

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrosynth import features
from spectrosynth.batch import RenderSettings
from spectrosynth.batch.jobs import Job
from spectrosynth.batch.manifest import check_settings
from spectrosynth.batch.render import render_jobs
from spectrosynth.errors import ModelLayoutError, SpectrosynthError
from spectrosynth.griffin_lim import GriffinLimVocoder, mel_to_magnitude
from spectrosynth.outputs import OutputSettings
from spectrosynth.vocoder import StreamingVocoder, Vocoder, load_vocoder

AUDIO = Path(__file__).parent / "data" / "audio" / "waltzes1-timgm6mb.flac"
RATE = 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small FFTs and products: a second thread only waits on the first, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """2 s of a real soundfont render (100 frames), from 1 s in: the tune's first notes."""
    return features.load_audio(AUDIO)[RATE : 3 * RATE]


def chord(seconds: float = 2.0) -> np.ndarray:
    """A C major chord of harmonic tones, each note starting later and decaying: 2 s, peak about 0.5."""
    t = np.arange(int(seconds * RATE)) / RATE
    audio = np.zeros_like(t)
    for i, f0 in enumerate((261.63, 329.63, 392.0)):
        onset = 0.3 * i
        envelope = np.where(t >= onset, np.exp(-2.0 * (t - onset)), 0.0)
        for k in range(1, 6):
            audio += 0.1 / k * envelope * np.sin(2 * np.pi * k * f0 * t)
    return audio.astype(np.float32)


def errors(audio: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """The re-analysed log-mel's mean absolute error, and the mel spectral convergence."""
    again = features.log_mel_spectrogram(audio.astype(np.float64))
    mel, target_mel = np.exp(again.astype(np.float64)), np.exp(target.astype(np.float64))
    return float(np.abs(again - target).mean()), float(
        np.linalg.norm(mel - target_mel) / np.linalg.norm(target_mel)
    )


# --------------------------------------------------------------------------------------------------------
# The front end's conventions


def test_its_stft_is_the_front_ends(recording):
    vocoder = GriffinLimVocoder(0)
    spectrum = vocoder.stft(torch.from_numpy(recording)[None])[0]
    assert spectrum.shape == (len(recording) // 320, 513)
    mel = spectrum.abs().double().numpy() @ features.mel_matrix().astype(np.float64)
    expected = features._mel_float64(recording.astype(np.float64))
    np.testing.assert_allclose(mel, expected, rtol=1e-4, atol=1e-5)


def test_its_inverse_stft_gives_the_signal_back(recording):
    """Consistent spectrogram in, the signal out: exactly after the first 20 ms, which the first frame alone
    covers (its divisor is floored there, so the first 13 ms fade in)."""
    vocoder = GriffinLimVocoder(0)
    x = torch.from_numpy(chord())[None]
    back = vocoder.istft(vocoder.stft(x))
    assert back.shape == x.shape
    torch.testing.assert_close(back[:, 320:], x[:, 320:], atol=1e-6, rtol=0)
    torch.testing.assert_close(back[:, 205:320], x[:, 205:320], atol=1e-6, rtol=0)
    assert (back[:, :205].abs() <= x[:, :205].abs() + 1e-6).all()


def test_nnls_fits_the_mel_better_than_the_pseudo_inverse(recording):
    target = torch.from_numpy(features.log_mel_spectrogram(recording))
    fit = {}
    for n in (0, 30):
        magnitude = mel_to_magnitude(target, n)
        assert magnitude.shape == (len(target), 513) and (magnitude >= 0).all()
        mel = magnitude.double() @ torch.from_numpy(features.mel_matrix().astype(np.float64))
        fit[n] = (torch.log(mel.clamp(1e-5, 1e8)) - target).abs().mean().item()
    assert fit[30] < fit[0] / 10 and fit[30] < 0.005


# --------------------------------------------------------------------------------------------------------
# Reconstruction


@pytest.mark.parametrize("source", ["recording", "chord"])
def test_error_falls_as_iterations_increase(source, recording):
    audio = recording if source == "recording" else chord()
    target = features.log_mel_spectrogram(audio)
    measured = [errors(GriffinLimVocoder(n)(target), target) for n in (1, 8, 32)]
    (l1_1, sc_1), (l1_8, sc_8), (l1_32, sc_32) = measured
    assert l1_1 > l1_8 > l1_32 and sc_1 > sc_8 > sc_32, measured
    # Measured: recording 0.134 and 0.056, chord 0.419 and 0.078 (its many near-silent bands weigh in the
    # log); bench/griffin_lim_bench.py has the whole curve for 8 s of the recording.
    assert sc_32 < 0.1 and l1_32 < (0.16 if source == "recording" else 0.5), measured


def test_call_interface_lengths_and_dtype():
    vocoder = GriffinLimVocoder(2)
    for frames in (1, 7, 256):
        mel = np.full((frames, 128), -5.0, np.float32)
        audio = vocoder(mel)
        assert audio.shape == (frames * 320,) and audio.dtype == np.float32 and np.isfinite(audio).all()
    assert vocoder(np.zeros((0, 128), np.float32)).shape == (0,)
    assert vocoder(np.zeros((3, 0, 128), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match="128 mel bins"):
        vocoder(np.zeros((10, 80), np.float32))
    assert vocoder.name == "griffin-lim" and vocoder.providers == ["torch (cpu)"]


def test_batched_equals_one_at_a_time_and_is_deterministic(recording):
    a = features.log_mel_spectrogram(recording)
    b = features.log_mel_spectrogram(chord())[: len(a)]
    vocoder = GriffinLimVocoder(8)
    both = vocoder(np.stack([a, b]))
    assert both.shape == (2, len(a) * 320) and both.dtype == np.float32
    np.testing.assert_allclose(both[0], vocoder(a), atol=1e-6, rtol=0)
    np.testing.assert_allclose(both[1], vocoder(b), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(vocoder(a), vocoder(a))


def test_streaming_equals_vocoding_the_whole_song(recording):
    """Each iteration reaches one frame further, so with fewer iterations than the streamer's context the
    chunks' audio is the whole song's (up to rounding); with more, the chunk edges show (measured: 1e-3 at
    32 iterations and 12 frames of context; the renderer streams with 64)."""
    mel = features.log_mel_spectrogram(recording)  # 100 frames, in chunks of 32 with 12 frames of context
    for iterations, exact in ((8, True), (32, False)):
        vocoder = GriffinLimVocoder(iterations)
        stream = StreamingVocoder(vocoder, chunk=32, context=12)
        pieces = [audio for i in range(0, len(mel), 20) for audio in stream.feed(mel[i : i + 20])]
        audio = np.concatenate([*pieces, *stream.finish()])
        whole = vocoder(mel)
        assert audio.shape == whole.shape
        difference = np.abs(audio - whole).max()
        assert (difference < 1e-6) if exact else (difference > 1e-4), (iterations, difference)


# --------------------------------------------------------------------------------------------------------
# Loading: load_vocoder, from_pretrained and model folders without melgan/


@pytest.fixture
def no_melgan(tmp_path, tiny_model) -> Path:
    """The tiny model without its vocoder, as `spectrosynth train` from scratch leaves one."""
    folder = tmp_path / "scratch"
    shutil.copytree(tiny_model, folder)
    shutil.rmtree(folder / "melgan")
    return folder


def test_load_vocoder(tiny_model):
    assert isinstance(load_vocoder("model", tiny_model), Vocoder)
    assert isinstance(load_vocoder("griffin-lim", tiny_model), GriffinLimVocoder)
    with pytest.raises(SpectrosynthError, match="unknown vocoder 'melgan'; use model or griffin-lim"):
        load_vocoder("melgan", tiny_model)


def test_a_model_without_melgan_loads_with_griffin_lim_only(no_melgan, waltz):
    from spectrosynth.pipeline import Synthesizer

    with pytest.raises(ModelLayoutError) as e:
        Synthesizer.from_pretrained(no_melgan, device="cpu", dtype="float32")
    message = str(e.value)
    assert "\n" not in message and "has no vocoder (melgan/model.onnx)" in message
    assert "--vocoder griffin-lim" in message
    synth = Synthesizer.from_pretrained(no_melgan, device="cpu", dtype="float32", vocoder="griffin-lim")
    assert isinstance(synth.vocoder, GriffinLimVocoder)
    rendering = synth.render(waltz, steps=1, length=1.0)
    assert rendering.audio.shape == (len(rendering.mel) * 320,) and np.isfinite(rendering.audio).all()
    with pytest.raises(SpectrosynthError, match="unknown vocoder 'wavenet'"):
        Synthesizer.from_pretrained(no_melgan, device="cpu", vocoder="wavenet")


# --------------------------------------------------------------------------------------------------------
# Batch: the vocoder is a render setting, and every worker builds the same one


def _settings(**changes) -> RenderSettings:
    base = RenderSettings("tiny", None, "float32", "unipc", 2, 2.0, 0, output=OutputSettings(fmt="wav"),
                          duration=1.0)  # fmt: skip
    return replace(base, **changes)


def test_the_vocoder_is_part_of_the_batch_settings(tmp_path):
    default, griffin_lim = _settings(), _settings(vocoder="griffin-lim")
    # The default is not written out, so folders rendered before --vocoder existed keep their digest.
    # (Nor are the later ones: --guidance-interval, --stems, and the output's --channels and --loudness.)
    legacy = {k: v for k, v in asdict(default).items() if k not in ("vocoder", "guidance_interval", "stems")}
    legacy["output"] = {k: v for k, v in legacy["output"].items() if k not in ("channels", "loudness")}
    text = json.dumps(legacy, sort_keys=True, separators=(",", ":"))
    assert default.digest == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert griffin_lim.digest != default.digest
    assert RenderSettings.from_dict(griffin_lim.to_dict()) == griffin_lim
    assert RenderSettings.from_dict(default.to_dict()) == default
    check_settings(tmp_path, griffin_lim, force=False)
    with pytest.raises(SpectrosynthError, match=r"other settings \(vocoder 'griffin-lim' -> 'model'\)"):
        check_settings(tmp_path, default, force=False)


def test_render_jobs_refuses_a_model_loaded_with_another_vocoder(tmp_path, tiny_synth, waltz):
    job = Job("a.mid", waltz, tmp_path / "a.wav")
    with pytest.raises(SpectrosynthError, match="ask for the griffin-lim vocoder, but the model was loaded"):
        list(render_jobs([job], tiny_synth, _settings(vocoder="griffin-lim")))
    assert not job.target.exists()


def test_ray_workers_build_the_batch_vocoder(tmp_path, no_melgan):
    """The Ray actor class, called directly (no Ray needed): it loads the model with the settings' vocoder."""
    from spectrosynth.batch.distributed import Renderer

    settings = _settings(model=str(no_melgan), vocoder="griffin-lim")
    worker = Renderer(str(tmp_path / "out"), settings, str(no_melgan), "cpu", 0)
    assert worker.error is None and isinstance(worker.synth.vocoder, GriffinLimVocoder)
    refused = Renderer(str(tmp_path / "out"), _settings(model=str(no_melgan)), str(no_melgan), "cpu", 0)
    assert refused.error is not None and "--vocoder griffin-lim" in refused.error
