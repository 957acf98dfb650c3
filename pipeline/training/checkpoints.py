"""Resumable training state: capture and restore, and a pickle-free flat-array form for storage.

A state is a plain nested structure (dicts, lists, tuples, numbers, strings, None, tensors, numpy
arrays). ``state_to_arrays`` flattens it into ``{name: numpy array}`` (storable in a DataJoint
``<blob>`` or an ``.npz`` without pickle) and ``state_from_arrays`` rebuilds it exactly: same
values, dtypes, container types and dict key types.
"""
import json
import random

import numpy as np
import torch

STRUCTURE_KEY = "__structure__"


def copy_state_dict(module):
    """Detached CPU copy of a module's state_dict (tensors cloned, so later training cannot change it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _generators(loaders):
    """RNGs owned by the train loaders and their samplers, by name (e.g. a shuffling generator)."""
    found = {}
    for data_key, loader in loaders.items():
        for owner, obj in (("loader", loader), ("sampler", getattr(loader, "sampler", None))):
            generator = getattr(obj, "generator", None)
            if isinstance(generator, (torch.Generator, np.random.Generator)):
                found[f"{data_key}/{owner}"] = generator
    return found


def capture_rng(loaders):
    """States of every RNG a training epoch draws from: Python, numpy, torch (CPU, CUDA), the loaders'."""
    generators = {
        name: g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
        for name, g in _generators(loaders).items()
    }
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": generators,
    }


def restore_rng(state, loaders):
    """Inverse of ``capture_rng``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = _generators(loaders)
    if set(generators) != set(state["generators"]):
        raise ValueError(
            f"the checkpoint's loader RNGs {sorted(state['generators'])} do not match this run's {sorted(generators)}"
        )
    for name, generator in generators.items():
        if isinstance(generator, torch.Generator):
            generator.set_state(state["generators"][name])
        else:
            generator.bit_generator.state = state["generators"][name]


# ---- flat-array form -------------------------------------------------------------------------------


def state_to_arrays(state):
    """Flatten a state into ``{name: numpy array}``; the structure travels as JSON in ``__structure__``."""
    arrays = {}

    def encode(obj):
        if isinstance(obj, torch.Tensor):
            name = f"a{len(arrays)}"
            arrays[name] = obj.detach().cpu().numpy().copy()
            return {"tensor": name, "dtype": str(obj.dtype).removeprefix("torch.")}
        if isinstance(obj, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = obj.copy()
            return {"ndarray": name}
        if isinstance(obj, dict):
            return {"dict": [[encode(k), encode(v)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {type(obj).__name__: [encode(v) for v in obj]}
        if isinstance(obj, np.generic):
            return encode(obj.item())
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return {"value": obj}
        raise TypeError(f"cannot store a {type(obj).__name__} in a training state: {obj!r:.80}")

    structure = encode(state)
    arrays[STRUCTURE_KEY] = np.array(json.dumps(structure))
    return arrays


def state_from_arrays(arrays):
    """Rebuild the state that ``state_to_arrays`` flattened."""
    if STRUCTURE_KEY not in arrays:
        raise ValueError(f"not a flattened training state: no {STRUCTURE_KEY!r} entry")

    def decode(node):
        (kind, payload), *_ = node.items()
        if kind == "tensor":
            return torch.from_numpy(np.array(arrays[payload])).to(getattr(torch, node["dtype"]))
        if kind == "ndarray":
            return np.array(arrays[payload])
        if kind == "dict":
            return {decode(k): decode(v) for k, v in payload}
        if kind == "list":
            return [decode(v) for v in payload]
        if kind == "tuple":
            return tuple(decode(v) for v in payload)
        return payload

    return decode(json.loads(str(arrays[STRUCTURE_KEY])))
