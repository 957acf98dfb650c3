"""Canonical typed config hashing (schemas.tables.hashing): same config, same key; different types, different keys."""
import hashlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from schemas.tables.hashing import UnhashableConfigError, canonical_json, config_hash

SEED_MODEL_CONFIG = {
    "input_kern": 9, "hidden_kern": 7, "hidden_channels": 64, "layers": 4, "depth_separable": True,
    "stack": -1, "gamma_input": 6.3831, "gamma_readout": 0.0076, "gauss_type": "full", "shifter": True,
    "grid_mean_predictor": {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
                            "hidden_features": 30, "final_tanh": True},
}

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def test_canonical_form_is_fixed_and_hashed_with_md5():
    # The canonical form is part of the database contract: changing it changes every stored key.
    canonical = '["dict",[["a",["none"]],["b",["list",[["int","1"],["float","2.0"]]]]]]'
    assert canonical_json({"b": [1, 2.0], "a": None}) == canonical
    assert config_hash({"b": [1, 2.0], "a": None}) == hashlib.md5(canonical.encode()).hexdigest()


def test_key_order_does_not_matter():
    reordered = dict(reversed(list(SEED_MODEL_CONFIG.items())))
    reordered["grid_mean_predictor"] = dict(reversed(list(SEED_MODEL_CONFIG["grid_mean_predictor"].items())))
    assert config_hash(reordered) == config_hash(SEED_MODEL_CONFIG)


@pytest.mark.parametrize("a, b", [
    (1, 1.0), (1, "1"), (True, 1), (False, 0), (None, "None"), ([], {}), ([], ""), (0.0, -0.0),
    ({"a": 1}, {"a": "1"}), ({"a": {"b": 1}}, {"a.b": 1}), ([1, [2]], [[1], 2]),
])
def test_types_and_structure_give_different_keys(a, b):
    assert config_hash(a) != config_hash(b)


def test_tuples_equal_lists_and_numpy_scalars_equal_python_scalars():
    assert config_hash({"k": (1, 2)}) == config_hash({"k": [1, 2]})
    assert config_hash({"x": np.float64(0.1), "n": np.int32(3), "b": np.bool_(True)}) == config_hash({"x": 0.1, "n": 3, "b": True})


@pytest.mark.parametrize("bad, culprit", [
    ({"paths": {"a.zip"}}, "paths"), ({"w": np.zeros(3)}, "w"), ({"f": print}, "f"),
    ({"nested": {"deep": [1, b"x"]}}, r"nested.deep\[1\]"), ({1: 2}, "key 1"),
])
def test_non_plain_values_are_refused_naming_where(bad, culprit):
    with pytest.raises(UnhashableConfigError, match=culprit):
        config_hash(bad)
    assert issubclass(UnhashableConfigError, TypeError)


@given(plain)
def test_hash_is_32_hex_and_deterministic(config):
    digest = config_hash(config)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert config_hash(config) == digest
