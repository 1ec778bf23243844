"""The engine end to end on a tiny random checkpoint in the published layout, through the Python API."""

import numpy as np
import pytest
import torch

from spectrosynth import Synthesizer
from spectrosynth.constants import FRAMES_PER_SEGMENT, SAMPLE_RATE, SAMPLER_STEPS, SAMPLES_PER_SEGMENT
from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import read_midi
from spectrosynth.pipeline import Progress, resolve_device, resolve_dtype, scale_features, scale_to_log_mel
from spectrosynth.tokens import tokenize


def test_renders_a_real_multitrack_song_to_16khz_audio(tiny_synth, complex_midi):
    events = []
    # 18 tracks with drums; 58 segments. 2 steps keep it quick; the length does not depend on steps.
    result = tiny_synth.render(complex_midi, steps=2, seed=0, callback=events.append)
    segments = len(tokenize(read_midi(complex_midi)))
    assert segments == 58 and len(result.segments) == segments
    assert result.sample_rate == SAMPLE_RATE == 16000
    assert result.audio.dtype == np.float32 and result.audio.shape == (segments * SAMPLES_PER_SEGMENT,)
    assert result.mel.dtype == np.float32 and result.mel.shape == (segments * FRAMES_PER_SEGMENT, 128)
    assert np.isfinite(result.audio).all() and result.audio.std() > 0
    assert result.mel.min() >= np.log(1e-5) - 1e-5 and result.mel.max() <= 4.0 + 1e-5
    assert len(events) == segments * 2
    assert events[0] == Progress(0, segments, 1, 2) and events[-1] == Progress(segments - 1, segments, 2, 2)
    assert [e.fraction for e in events] == sorted(e.fraction for e in events) and events[-1].fraction == 1.0


def test_same_seed_same_spectrogram_other_seed_other(tiny_synth):
    tokens = [[1135, 1064, 1134, 53, 1133, 1067, 1], [1134, 1]]
    a = tiny_synth.generate_mel(tokens, steps=4, seed=3)
    b = tiny_synth.generate_mel(tokens, steps=4, seed=3)
    c = tiny_synth.generate_mel(tokens, steps=4, seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_explicit_generator_equals_seed(tiny_synth):
    tokens = [[1134, 1]]
    a = tiny_synth.generate_mel(tokens, steps=3, seed=11)
    b = tiny_synth.generate_mel(tokens, steps=3, generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(a, b)


def test_context_links_segments(tiny_synth):
    # The second segment is conditioned on the first: changing only the first changes the second.
    second = [1134, 1]
    a = tiny_synth.generate_mel([[1135, 1064, 1134, 1], second], steps=3, seed=0)
    b = tiny_synth.generate_mel([[1135, 1080, 1134, 1], second], steps=3, seed=0)
    assert np.abs(a[:256] - b[:256]).max() > 0 and np.abs(a[256:] - b[256:]).max() > 0


def test_bfloat16_stays_close_to_float32(tiny_model):
    tokens = [[1135, 1064, 1134, 53, 1133, 1067, 1]]
    f32 = Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="float32").generate_mel(
        tokens, 5, seed=1
    )
    bf16 = Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="bfloat16").generate_mel(
        tokens, 5, seed=1
    )
    assert bf16.dtype == np.float32
    assert np.abs(f32 - bf16).mean() < 0.25  # log-mel units; bf16 has 8 bits of mantissa


def test_feature_scaling_round_trip():
    log_mel = torch.linspace(np.log(1e-5), 4.0, 50)
    torch.testing.assert_close(scale_to_log_mel(scale_features(log_mel)), log_mel, atol=1e-5, rtol=0)
    assert scale_features(torch.tensor([-100.0, 100.0])).tolist() == [-1.0, 1.0]
    assert scale_features(torch.tensor([0.0])).item() == pytest.approx(0.4843, abs=1e-4)  # spec §5


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SpectrosynthError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(SpectrosynthError, match="unknown device"):
        resolve_device("tpu:0:x")
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(SpectrosynthError, match="float16 is for CUDA"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(SpectrosynthError, match="unknown dtype"):
        resolve_dtype("int4", torch.device("cpu"))
    assert resolve_dtype("int8", torch.device("cpu")) == torch.float32  # around the quantized products
    with pytest.raises(SpectrosynthError, match="int8 is for CPUs"):
        resolve_dtype("int8", torch.device("cuda"))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpectrosynthError, match="no such model folder"):
        Synthesizer.from_pretrained(tmp_path / "nope", device="cpu")


@pytest.mark.parametrize(
    "sampler,guidance,precision,tolerance",
    [("diffusers", 1.0, torch.float32, 1e-4), ("diffusers", 2.0, torch.float32, 1e-4),
     ("unipc", 2.0, torch.float64, 1e-5), ("dpmpp-2m-sde", 2.0, torch.float64, 1e-5)],
)  # fmt: skip
def test_stacked_songs_render_as_they_would_alone(
    tiny_model, complex_midi, waltz, sampler, guidance, precision, tolerance
):
    """Stacked or alone, a song gets the same spectrogram. Solvers that start at pure noise divide the
    network's first prediction by alpha = 0.006, which turns float32 rounding differences between batch
    sizes into visible ones on a random network: those are checked in float64."""
    own = Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="float32")  # modules of its own
    synth = Synthesizer(own.notes_encoder, own.context_encoder, own.decoder, own.schedule, own.vocoder,
                        "cpu", precision)  # fmt: skip
    songs = [
        [s.tokens for s in tokenize(read_midi(complex_midi))][:3],  # token lists of different lengths
        [s.tokens for s in tokenize(read_midi(waltz))][:5],  # more segments than the others
        [s.tokens for s in tokenize(read_midi(complex_midi))][10:12],
    ]
    seeds, options = [0, 1, 2], {"sampler": sampler, "guidance": guidance}
    stacked = {}
    for song, k, mel in synth.iter_mel_batch(songs, steps=3, seeds=seeds, **options):
        assert k == len(stacked.setdefault(song, []))  # each song's segments arrive in order
        stacked[song].append(mel)
    for b, song in enumerate(songs):
        alone = synth.generate_mel(song, steps=3, seed=seeds[b], **options)
        np.testing.assert_allclose(np.concatenate(stacked[b]), alone, atol=tolerance, rtol=0)


def _decoder_calls(synth):
    """Record each decoder call's batch size and whether it had the unconditional branch."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append((args[0].shape[0], kwargs.get("unconditional", False), output.shape[0]))

    return calls, synth.decoder.register_forward_hook(hook, with_kwargs=True)


def test_defaults_are_unipc_20_steps_guided(tiny_synth):
    events = []
    calls, handle = _decoder_calls(tiny_synth)
    try:
        mel = tiny_synth.generate_mel([[1135, 1064, 1134, 1], [1134, 1]], callback=events.append)
    finally:
        handle.remove()
    assert mel.shape == (512, 128)
    assert [e.steps for e in events] == [20] * 40 and events[-1].fraction == 1.0
    assert calls == [(1, True, 2)] * 40  # one decoder call per step: both branches batched


def test_guidance_1_is_one_pass_per_step_and_changes_the_result(tiny_synth):
    tokens = [[1135, 1064, 1134, 53, 1133, 1067, 1]]
    calls, handle = _decoder_calls(tiny_synth)
    try:
        unguided = tiny_synth.generate_mel(tokens, steps=5, guidance=1.0)
    finally:
        handle.remove()
    assert calls == [(1, False, 1)] * 5
    guided = tiny_synth.generate_mel(tokens, steps=5)
    assert np.abs(guided - unguided).max() > 0.1


@pytest.mark.parametrize("sampler", list(SAMPLER_STEPS))
def test_every_sampler_renders_through_the_api(tiny_synth, waltz, sampler):
    result = tiny_synth.render(waltz, steps=4, seed=1, sampler=sampler, length=6.0)
    assert result.mel.shape == (512, 128) and np.isfinite(result.audio).all()
    assert result.mel.min() >= np.log(1e-5) - 1e-5 and result.mel.max() <= 4.0 + 1e-5
    again = tiny_synth.render(waltz, steps=4, seed=1, sampler=sampler, length=6.0)
    np.testing.assert_array_equal(result.mel, again.mel)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"sampler": "euler"}, "unknown sampler 'euler'; use one of unipc, dpmpp-2m"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"guidance": -1.0}, "guidance must be a number >= 0"),
        ({"guidance": float("nan")}, "guidance must be a number >= 0"),
        ({"sampler": "diffusers", "steps": 1001}, "takes at most 1000 steps"),
    ],
)
def test_bad_sampling_options_are_clear_errors(tiny_synth, waltz, options, message):
    with pytest.raises(SpectrosynthError, match=message.replace("(", r"\(")):
        tiny_synth.render(waltz, length=3.0, **options)


@pytest.mark.parametrize("chunk,context,piece", [(256, 64, 256), (256, 8, 100), (100, 3, 777)])
def test_streaming_vocoder_equals_vocoding_the_whole(tiny_synth, chunk, context, piece):
    from spectrosynth.vocoder import StreamingVocoder

    mel = np.random.default_rng(0).uniform(-11, 4, (256 * 5 + 37, 128)).astype(np.float32)
    stream = StreamingVocoder(tiny_synth.vocoder, chunk, context)
    parts = [a for i in range(0, len(mel), piece) for a in stream.feed(mel[i : i + piece])] + stream.finish()
    whole = tiny_synth.vocoder(mel)
    assert sum(len(p) for p in parts) == len(whole) == len(mel) * 320
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4, rtol=0)


def test_streaming_vocoder_needs_its_context(tiny_synth):
    from spectrosynth.vocoder import StreamingVocoder

    # The test vocoder looks 2 frames around each frame: without context the chunk edges differ.
    mel = np.random.default_rng(1).uniform(-11, 4, (512, 128)).astype(np.float32)
    stream = StreamingVocoder(tiny_synth.vocoder, 256, 0)
    parts = stream.feed(mel) + stream.finish()
    assert np.abs(np.concatenate(parts) - tiny_synth.vocoder(mel)).max() > 1e-3


def test_song_output_writes_progressively_what_whole_rendering_gives(tmp_path, tiny_synth, waltz):
    import soundfile as sf

    from spectrosynth.outputs import OutputSettings, SongOutput
    from spectrosynth.tokens import prepare

    song = prepare(read_midi(waltz), length=12.0)  # 3 segments, music until 12 s
    mels = list(tiny_synth.iter_mel([s.tokens for s in song.segments], steps=2, seed=0))
    settings = OutputSettings(fmt="wav", bit_depth=32, clip="none", tail=0.5)
    with SongOutput(
        song, tiny_synth.vocoder, str(tmp_path / "a.wav"), settings, mel_out=str(tmp_path / "a.npy")
    ) as out:
        for mel in mels:
            out.add(mel)
        out.finish()
    whole = np.concatenate(mels)
    audio, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    assert len(audio) == round(12.5 * 16000)
    np.testing.assert_allclose(audio, tiny_synth.vocoder(whole)[: len(audio)], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), whole[: -(-len(audio) // 320)])


def test_song_output_aborted_leaves_nothing(tmp_path, tiny_synth, waltz):
    from spectrosynth.outputs import OutputSettings, SongOutput
    from spectrosynth.tokens import prepare

    song = prepare(read_midi(waltz), length=6.0)
    with pytest.raises(KeyboardInterrupt):
        with SongOutput(song, tiny_synth.vocoder, str(tmp_path / "a.flac"), OutputSettings(fmt="flac"),
                        mel_out=str(tmp_path / "a.npy")) as out:  # fmt: skip
            out.add(np.zeros((256, 128), np.float32))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("speedup,expected", [(1.1, torch.float32), (1.8, torch.bfloat16)])
def test_auto_dtype_follows_the_hardware(monkeypatch, tmp_path, speedup, expected):
    """bfloat16 where it was measured at least 1.25x faster than float32 (once per machine: see
    tests/test_precision_decision.py)."""
    from spectrosynth import precision

    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(tmp_path))
    monkeypatch.delenv(precision.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "_decisions", {})
    monkeypatch.setattr(precision, "measure_bfloat16_speedup", lambda: {"speedup": speedup})
    assert resolve_dtype("auto", torch.device("cpu")) == expected


def test_float16_residuals_stay_finite():
    from spectrosynth.models.layers import clamp_float16

    x = torch.tensor([7e4, -7e4, 1.0]).half()
    assert torch.isfinite(clamp_float16(x * 1)).all() and clamp_float16(x)[2] == 1
    big = torch.tensor([1e6])
    assert clamp_float16(big) is big  # other precisions untouched


def test_auto_on_cuda_takes_bfloat16_only_where_it_is_native(monkeypatch):
    """A T4 or V100 emulates bfloat16 (torch's is_bf16_supported() says yes by default): float16 there."""
    import torch

    from spectrosynth.pipeline import resolve_precision

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", cuda) == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) == "bfloat16"
