"""Training: Stage I on edit masks, Stage II (VAE round-trip calibration, EMA self-training,
edit-noise disentanglement), resumable, multi-GPU through torchrun. See docs/training.md."""
from sigma_fast.train.config import TrainConfig, load_train_config
from sigma_fast.train.loop import NonFiniteLossError, Trainer, train

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "load_train_config", "train"]
