"""Training: ``memlab.train.train(TrainConfig(...)) -> run directory`` (see :mod:`memlab.train.trainer`)."""

from __future__ import annotations

from memlab.train.config import TrainConfig
from memlab.train.trainer import TrainingDiverged, train

__all__ = ["TrainConfig", "TrainingDiverged", "train"]
