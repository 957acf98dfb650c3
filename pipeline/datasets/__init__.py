"""SENSORIUM static datasets: the file-tree reader, ``static_loaders`` and a synthetic V1 population."""
from .filetree import DatasetFormatError
from .loaders import static_loader, static_loaders

__all__ = ["DatasetFormatError", "static_loader", "static_loaders"]
