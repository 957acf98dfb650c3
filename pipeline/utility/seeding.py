"""Seeding every random number generator a training run touches."""
import random

import numpy as np
import torch


def set_random_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (CPU and CUDA), as nnfabrik's ``set_random_seed`` does.

    Args:
        seed: the integer seed.
        deterministic: also ask cuDNN for deterministic kernels (and turn off its autotuner).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
