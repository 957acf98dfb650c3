"""Choosing the torch device and moving batches onto it."""
import torch


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and returned as a torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]' ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here; use device='auto' or 'cpu'")
    return resolved


def move_to_device(fields, device):
    """Copy of a dict of batch fields with every tensor moved to ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in fields.items()}
