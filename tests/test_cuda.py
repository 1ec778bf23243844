"""Rendering on a CUDA device, on the tiny random checkpoint (spectrosynth.testing).

The tests marked `cuda` skip, with the reason, where torch sees no CUDA device (`pytest -m cuda` runs just
them; bench/gpu_check.sh does on a GPU machine). Each one's body is a `check_*` function of the device, which
the unmarked tests below also run on the CPU, so that the logic is exercised on every machine.

Bounds, all in log-mel units (natural log; the spectrogram spans ln(1e-5) to 4, about 15.5), on the mean
absolute difference over every frame and bin (the maximum is dominated by the few values near a clipping
edge, where a rounding difference moves a value across it: float32 with 1 thread against 2 threads on the same
CPU differs by 4e-6 on the mean but 3e-3 at the maximum):

- bfloat16 against float32 < 0.25, float16 against float32 < 0.1, both finite. bfloat16 keeps 8 bits of
  mantissa, float16 11; on a CPU they measured 0.081 and 0.012 on this model and these tokens, so the bounds
  leave a margin of about 3x and 8x for CUDA's kernels (tests/test_pipeline.py uses 0.25 for bfloat16).
- the same seed in float32 on the CPU and on CUDA < 1e-3. The noise is the same numbers on both: it is drawn
  from a CPU generator in float32 and then moved to the device (spectrosynth.sampling.base.randn), so only the
  kernels' rounding differs (float32 products without TF32: torch leaves
  torch.backends.cuda.matmul.allow_tf32 off unless asked); that is of the order of the thread-count
  difference above, and 1e-3 is 250 times it. TF32, which spectrosynth never turns on, would exceed it.
- several songs per pass against each alone (render_jobs, as tests/test_batch.py does on the CPU): mean
  < 1e-4 and max < 0.05 on either device. A row that took another row's noise or context would differ by
  about 1 on the mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spectrosynth.pipeline import Synthesizer

DATA = Path(__file__).parent / "data" / "midi"
TOKENS = [[1135, 1064, 1134, 53, 1133, 1067, 1], [1134, 1]]  # two short segments, the second with context
STEPS = 5

CUDA_REASON = (
    f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
    f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU build'})"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)


def cuda_test(function):
    """Marked `cuda` (selected by `pytest -m cuda`) and skipped without a CUDA device."""
    return pytest.mark.cuda(needs_cuda(function))


def on(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def mean_gap(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).mean())


# ------------------------------------------------------------------------------------------------------
# The checks, each for one device


def check_everything_on_the_device(model: Path, device: str, dtype: str) -> None:
    synth = Synthesizer.from_pretrained(model, device=device, dtype=dtype)
    wanted = torch.device(device)
    expected_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    assert synth.device.type == wanted.type and synth.dtype == expected_dtype
    for name, net in (
        ("notes_encoder", synth.notes_encoder),
        ("context_encoder", synth.context_encoder),
        ("decoder", synth.decoder),
    ):
        tensors = [("parameter", n, t) for n, t in net.named_parameters()]
        tensors += [("buffer", n, t) for n, t in net.named_buffers()]
        assert tensors, name
        elsewhere = [f"{kind} {n} on {t.device}" for kind, n, t in tensors if not on(t, wanted)]
        assert not elsewhere, f"{name}: {elsewhere[:3]}"
        other = [
            f"{n} {t.dtype}" for _, n, t in tensors if t.is_floating_point() and t.dtype != expected_dtype
        ]
        assert not other, f"{name}: {other[:3]}"
    mel = synth.generate_mel(TOKENS, 2, seed=0)
    assert mel.dtype == np.float32 and mel.shape == (512, 128) and np.isfinite(mel).all()


def check_precision_close_to_float32(model: Path, device: str, dtype: str, bound: float) -> float:
    f32 = Synthesizer.from_pretrained(model, device=device, dtype="float32").generate_mel(
        TOKENS, STEPS, seed=1
    )
    low_synth = Synthesizer.from_pretrained(model, device=device, dtype=dtype)
    low = low_synth.generate_mel(TOKENS, STEPS, seed=1)
    assert low.dtype == np.float32 and np.isfinite(low).all(), f"{dtype} on {device} gave inf or nan"
    audio = low_synth.vocoder(low)
    assert np.isfinite(audio).all() and audio.std() > 0
    gap = mean_gap(f32, low)
    assert gap < bound, f"{dtype} on {device}: mean |delta log-mel| {gap:.4f} >= {bound}"
    return gap


def check_vocoder_providers(model: Path, device: str) -> list[str]:
    """The onnxruntime providers the loaded vocoder runs on (spectrosynth.vocoder.Vocoder.providers): CUDA
    first when a CUDA device is asked for and onnxruntime offers CUDAExecutionProvider (onnxruntime-gpu),
    else the CPU provider alone."""
    import onnxruntime as ort

    synth = Synthesizer.from_pretrained(model, device=device, dtype="float32")
    providers = list(synth.vocoder.providers)
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers[0] == "CUDAExecutionProvider", (
            f"onnxruntime offers CUDAExecutionProvider but the vocoder session runs on {providers}: "
            "onnxruntime-gpu could not load its CUDA libraries (cuDNN, cuBLAS) and fell back"
        )
    else:
        assert providers == ["CPUExecutionProvider"], providers
    mel = synth.generate_mel(TOKENS[:1], 2, seed=0)
    audio = synth.vocoder(mel)
    assert audio.shape == (256 * 320,) and np.isfinite(audio).all()
    return providers


def check_same_seed_on_cpu_and_device(model: Path, device: str, bound: float = 1e-3) -> float:
    cpu = Synthesizer.from_pretrained(model, device="cpu", dtype="float32").generate_mel(
        TOKENS, STEPS, seed=7
    )
    there = Synthesizer.from_pretrained(model, device=device, dtype="float32").generate_mel(
        TOKENS, STEPS, seed=7
    )
    gap = mean_gap(cpu, there)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    assert gap < bound, (
        f"float32 CPU against {device}: mean |delta log-mel| {gap:.2e} >= {bound} (TF32 {tf32})"
    )
    return gap


def check_batch_equals_alone(model: Path, device: str, folder: Path) -> tuple[float, float]:
    """Four real songs of up to 3 segments, 3 per pass (continuous batching), against each alone; the
    settings of tests/test_batch.py (diffusers' sampler, 3 steps, unguided, float32)."""
    from spectrosynth.batch.jobs import Job, RenderSettings
    from spectrosynth.batch.render import render_jobs
    from spectrosynth.outputs import OutputSettings

    synth = Synthesizer.from_pretrained(model, device=device, dtype="float32")
    output = OutputSettings(fmt="wav")
    settings = RenderSettings(
        "tiny", None, "float32", "diffusers", 3, 1.0, 0, output=output, save_mel=True, duration=12.0
    )
    songs = sorted((DATA / "nottingham").glob("*.mid"))[:4]

    def jobs(name: str) -> list[Job]:
        out = folder / name
        return [Job(s.name, s, out / f"{s.stem}.wav", out / f"{s.stem}.npy") for s in songs]

    alone = jobs("alone")
    for job in alone:
        (result,) = render_jobs([job], synth, settings, batch_size=1)
        assert result.ok, result.error
    together = jobs("together")
    results = list(render_jobs(together, synth, settings, batch_size=3))
    assert [r.status for r in results] == ["ok"] * len(songs)
    worst_mean, worst_max = 0.0, 0.0
    for a, b in zip(alone, together, strict=True):
        x, y = np.load(a.mel_target), np.load(b.mel_target)
        worst_mean = max(worst_mean, mean_gap(x, y))
        worst_max = max(worst_max, float(np.abs(x - y).max()))
    assert worst_mean < 1e-4 and worst_max < 0.05, (worst_mean, worst_max)
    return worst_mean, worst_max


# ------------------------------------------------------------------------------------------------------
# On CUDA


@cuda_test
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_every_parameter_and_buffer_is_on_the_device(tiny_model, dtype):
    check_everything_on_the_device(tiny_model, "cuda", dtype)


@cuda_test
@pytest.mark.parametrize(("dtype", "bound"), [("bfloat16", 0.25), ("float16", 0.1)])
def test_cuda_half_precisions_are_finite_and_close_to_float32(tiny_model, dtype, bound):
    check_precision_close_to_float32(tiny_model, "cuda", dtype, bound)


@cuda_test
def test_cuda_vocoder_runs_on_onnxruntimes_cuda_provider(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (onnxruntime-gpu is not installed): "
            "the vocoder runs on the CPU provider on CUDA machines; test_cuda_vocoder_falls_back checks that"
        )
    assert check_vocoder_providers(tiny_model, "cuda")[0] == "CUDAExecutionProvider"


@cuda_test
def test_cuda_vocoder_falls_back_to_the_cpu_provider(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip(
            "onnxruntime-gpu is installed: test_cuda_vocoder_runs_on_onnxruntimes_cuda_provider applies"
        )
    assert check_vocoder_providers(tiny_model, "cuda") == ["CPUExecutionProvider"]


@cuda_test
def test_cuda_batch_of_songs_equals_each_song_alone(tiny_model, tmp_path):
    check_batch_equals_alone(tiny_model, "cuda", tmp_path)


@cuda_test
def test_cuda_and_cpu_render_the_same_seed_alike(tiny_model):
    check_same_seed_on_cpu_and_device(tiny_model, "cuda")


# ------------------------------------------------------------------------------------------------------
# The same checks on the CPU, so that they run everywhere


def test_checks_on_the_cpu_everything_on_the_device(tiny_model):
    check_everything_on_the_device(tiny_model, "cpu", "float32")
    check_everything_on_the_device(tiny_model, "cpu", "bfloat16")


def test_checks_on_the_cpu_bfloat16_close_to_float32(tiny_model):
    check_precision_close_to_float32(tiny_model, "cpu", "bfloat16", 0.25)


def test_checks_on_the_cpu_vocoder_on_the_cpu_provider(tiny_model):
    assert check_vocoder_providers(tiny_model, "cpu") == ["CPUExecutionProvider"]


def test_checks_on_the_cpu_batch_equals_alone(tiny_model, tmp_path):
    check_batch_equals_alone(tiny_model, "cpu", tmp_path)


def test_checks_on_the_cpu_same_seed_against_itself(tiny_model):
    assert check_same_seed_on_cpu_and_device(tiny_model, "cpu") == 0.0  # the CPU against itself: identical
