"""Training: the config dataclass, the trainer loop, checkpoints and metrics.

    >>> from cnnlab.train import TrainConfig, fit
    >>> fit(TrainConfig(epochs=3), "runs/lenet5", progress=True)
"""
from cnnlab.train.config import TrainConfig
from cnnlab.train.trainer import TrainingDiverged, build_model, evaluate, evaluate_checkpoint, fit, load_model

__all__ = ["TrainConfig", "TrainingDiverged", "build_model", "evaluate", "evaluate_checkpoint", "fit", "load_model"]
