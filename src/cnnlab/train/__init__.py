"""Training: the config dataclass, the trainer loop, checkpoints, metrics and evaluation.

    >>> from cnnlab.train import TrainConfig, fit
    >>> fit(TrainConfig(epochs=3), "runs/lenet5", progress=True)

Modules: ``config`` (TrainConfig), ``trainer`` (fit: the loop), ``build`` (a run's parts),
``restore`` (resume), ``rundir`` (the run directory's files), ``guard`` (divergence),
``sharding`` (multi-process data), ``engine`` (model, loss, evaluate),
``inference`` (load_model, evaluate_checkpoint), ``optim`` and ``schedules`` (factories over
torch.optim), ``lr_find``, ``bn`` (precise BN, BN-only training), ``evaluation`` (TTA, ensembles,
confusion), ``checkpoint``, ``metrics``, ``distributed`` (DDP through torchrun).
"""
from cnnlab.train.bn import precise_bn, train_only_bn
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model, evaluate
from cnnlab.train.evaluation import ensemble_proba, evaluate_runs, predict_proba
from cnnlab.train.inference import evaluate_checkpoint, load_model
from cnnlab.train.restore import resume_config
from cnnlab.train.ema import EMA
from cnnlab.train.predict import load_predictor
from cnnlab.train.trainer import TrainingDiverged, fit

__all__ = ["EMA", "TrainConfig", "TrainingDiverged", "build_model", "ensemble_proba", "evaluate", "evaluate_checkpoint",
           "evaluate_runs", "fit", "load_model", "load_predictor", "precise_bn", "predict_proba", "resume_config", "train_only_bn"]
