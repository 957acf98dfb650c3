"""Canonical, typed hashing of recipe configs: the same config gives the same key on every machine.

The config is turned into a tagged JSON document, then hashed with MD5 (32 hex characters):

- dict keys must be strings and are sorted, so key order never matters;
- every scalar carries its type, so ``1``, ``1.0``, ``"1"`` and ``True`` all hash differently;
- floats are written with ``repr`` (the shortest string that round-trips), so ``-0.0 != 0.0``;
- lists and tuples are the same sequence (a config stored in the database may come back as either);
- numpy scalars hash like the Python scalar they hold (``np.float64(0.1) == 0.1``); numpy arrays,
  sets, bytes and any other object are refused, because they have no portable canonical form.
"""
import hashlib
import json
import numpy as np


class UnhashableConfigError(TypeError):
    """A config holds a value that has no canonical typed form."""


def _tagged(value, path):
    if value is None:
        return ["none"]
    if isinstance(value, (bool, np.bool_)):
        return ["bool", bool(value)]
    if isinstance(value, (int, np.integer)):
        return ["int", str(int(value))]
    if isinstance(value, (float, np.floating)):
        return ["float", repr(float(value))]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, (list, tuple)):
        return ["list", [_tagged(v, f"{path}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise UnhashableConfigError(f"config key {bad[0]!r} at {path or 'top level'} is not a string")
        return ["dict", [[k, _tagged(value[k], f"{path}.{k}" if path else k)] for k in sorted(value)]]
    raise UnhashableConfigError(
        f"config value at {path or 'top level'} is a {type(value).__name__}, which has no canonical form; "
        "use None, bool, int, float, str, lists and dicts with string keys"
    )


def canonical_json(config) -> str:
    """The canonical typed serialization of ``config`` that :func:`config_hash` hashes."""
    return json.dumps(_tagged(config, ""), separators=(",", ":"), ensure_ascii=False)


def config_hash(config) -> str:
    """MD5 (32 hex characters) of the canonical typed serialization of ``config``."""
    return hashlib.md5(canonical_json(config).encode("utf-8")).hexdigest()
