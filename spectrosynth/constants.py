"""Fixed numbers of the published model, each with where it comes from.

The model hears 16 kHz mono audio as a 128-bin log-mel spectrogram at 50 frames a second, and reads MIDI
as events on a 10 ms grid. One model window (a "segment") is 256 frames = 5.12 s.
"""

from __future__ import annotations

import math

SAMPLE_RATE = 16_000  # Hz, the vocoder's output rate
HOP_LENGTH = 320  # samples per spectrogram frame
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH  # 50 frames/s
NUM_MEL_BINS = 128

FRAMES_PER_SEGMENT = 256  # decoder target length
SAMPLES_PER_SEGMENT = FRAMES_PER_SEGMENT * HOP_LENGTH  # 81_920 samples
SEGMENT_SECONDS = FRAMES_PER_SEGMENT / FRAME_RATE  # 5.12 s

STEPS_PER_SECOND = 100  # event time grid: 10 ms
STEPS_PER_FRAME = STEPS_PER_SECOND // FRAME_RATE  # 2
STEPS_PER_SEGMENT = FRAMES_PER_SEGMENT * STEPS_PER_FRAME  # 512
MAX_SHIFT_STEPS = 10 * STEPS_PER_SECOND  # a shift token spans at most 10 s

INPUT_LENGTH = 2048  # notes-encoder positions per segment, EOS included

# Log-mel range of the feature space: ln(1e-5) .. 4.0, scaled linearly to [-1, 1] for the decoder.
MIN_LOG_MEL = math.log(1e-5)  # -11.512925
MAX_LOG_MEL = 4.0

# Samplers (spectrosynth.sampling.SAMPLERS) and the network evaluations each takes unless told otherwise;
# docs/sampling.md has the measurements behind these choices. Here, not in spectrosynth.sampling, so that the
# command line can list them without importing torch.
DEFAULT_SAMPLER = "unipc"
SAMPLER_STEPS = {
    "unipc": 20,  # UniPC-2, deterministic: the most accurate at 20 steps and more
    "dpmpp-2m": 20,  # DPM-Solver++(2M), deterministic: the most accurate below 20 steps
    "ddim": 50,  # DDIM, deterministic, first order
    "dpmpp-2m-sde": 50,  # SDE-DPM-Solver++(2M), stochastic
    "ddpm": 1000,  # the original ancestral sampler, as the authors ran it
    "diffusers": 100,  # diffusers' port, bit for bit (with guidance 1)
}
DEFAULT_GUIDANCE = 2.0  # classifier-free guidance weight of the authors' demo; 1 = none (one pass per step)

# Spectrogram inverters (spectrosynth.vocoder.load_vocoder): "model" is the model folder's melgan/model.onnx,
# "griffin-lim" needs none (spectrosynth.griffin_lim; much lower quality, for models trained without one).
VOCODERS = ("model", "griffin-lim")
DEFAULT_VOCODER = "model"

# The segment cache's bound (spectrosynth.segment_cache, render --cache-size): about 15 000 segments of
# 133 KiB, some 22 hours of mono audio.
DEFAULT_CACHE_SIZE = "2G"
