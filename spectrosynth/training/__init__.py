"""Training and fine-tuning (docs/training.md): `train(TrainOptions(...))`, or `spectrosynth train`."""

from spectrosynth.training.trainer import (
    MODES,
    TrainOptions,
    TrainProgress,
    TrainResult,
    resumed_options,
    train,
)

__all__ = ["MODES", "TrainOptions", "TrainProgress", "TrainResult", "resumed_options", "train"]
