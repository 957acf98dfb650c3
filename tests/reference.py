"""The reference implementation (neuralpredictors 0.3.0 from PyPI), importable on Python 3.11.

neuralpredictors 0.3.0 fails at import on current Python: it does ``from collections import
Iterable``/``Mapping`` (removed in 3.10) and imports torchvision at module level (only needed by
TransferLearningCore, and torchvision is not installed here). These shims fix both without touching
the installed files, so tests can compare v1fabrik against the exact upstream code.

Usage in tests::

    from tests.reference import np_ref   # the neuralpredictors package (in the .[test] extra)
    core = np_ref.layers.cores.Stacked2dCore(...)
"""
import collections
import collections.abc
import importlib
import sys
import types


def _install_shims():
    for name in ("Iterable", "Mapping", "Sequence", "MutableMapping", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    if "torchvision" not in sys.modules:
        try:
            importlib.import_module("torchvision")
        except Exception:
            stub = types.ModuleType("torchvision")
            stub.models = types.ModuleType("torchvision.models")
            sys.modules["torchvision"] = stub
            sys.modules["torchvision.models"] = stub.models


def load_reference():
    """Import neuralpredictors 0.3.0 with the shims installed; returns the package."""
    _install_shims()
    np_ref = importlib.import_module("neuralpredictors")
    for sub in (
        "layers.cores",
        "layers.readouts",
        "layers.shifters",
        "layers.encoders",
        "data.datasets",
        "data.transforms",
        "data.samplers",
        "measures.np_functions",
        "measures.modules",
        "training.early_stopping",
        "training.cyclers",
        "regularizers",
    ):
        importlib.import_module(f"neuralpredictors.{sub}")
    return np_ref


np_ref = load_reference()
