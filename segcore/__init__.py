"""segcore: a plain PyTorch Lightning library for binary segmentation of Oxford-IIIT Pet with SMP models."""
from segcore.config import TrainConfig
from segcore.errors import UserError
from segcore.metrics_names import SWEEP_METRIC, SWEEP_MODE

__all__ = ["TrainConfig", "UserError", "SWEEP_METRIC", "SWEEP_MODE"]
