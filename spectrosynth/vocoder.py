"""The spectrogram inverter: the published `melgan/model.onnx`, a SoundStream-style GAN decoder,
on onnxruntime.

Input `input_features`: float32 (batch, frames, 128) natural-log mel; output float32 (batch, frames * 320) at
16 kHz. Runs on the CPU provider, or CUDA when onnxruntime-gpu is installed and a CUDA device is chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectrosynth.constants import HOP_LENGTH, NUM_MEL_BINS
from spectrosynth.errors import SpectrosynthError

INPUT_NAME = "input_features"


class Vocoder:
    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:
            raise SpectrosynthError(
                f"{path}: the vocoder cannot be loaded ({str(e).splitlines()[0][:120]}); download it again"
            ) from e
        names = [i.name for i in self.session.get_inputs()]
        if INPUT_NAME not in names:
            raise SpectrosynthError(
                f"{path}: the vocoder has inputs {names}, not '{INPUT_NAME}'; is it the model's?"
            )
        self.providers = self.session.get_providers()

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """mel (frames, 128) or (batch, frames, 128) log-mel -> audio (frames * 320,) or (batch, samples)."""
        batched = mel.ndim == 3
        features = np.ascontiguousarray(mel if batched else mel[None], dtype=np.float32)
        if features.shape[-1] != NUM_MEL_BINS:
            raise ValueError(f"expected {NUM_MEL_BINS} mel bins, got {features.shape[-1]}")
        audio = self.session.run(None, {INPUT_NAME: features})[0].astype(np.float32, copy=False)
        audio = audio.reshape(features.shape[0], features.shape[1] * HOP_LENGTH)
        return audio if batched else audio[0]
