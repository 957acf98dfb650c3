"""Training: sensorium's ``standard_trainer``, early stopping, losses and resumable checkpoints."""
from .checkpoints import state_from_arrays, state_to_arrays
from .trainer import NonFiniteLossError, standard_trainer

__all__ = ["standard_trainer", "state_to_arrays", "state_from_arrays", "NonFiniteLossError"]
