"""Properties of canonical config hashing over generated configs: deterministic (also across
processes), order-insensitive, type-sensitive, and refusing what has no canonical form."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from schemas.tables.hashing import UnhashableConfigError, config_hash



def config_strategy(floats):
    scalars = st.none() | st.booleans() | st.integers() | floats | st.text(max_size=8)
    values = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.text(max_size=4), children, max_size=3), max_leaves=10)
    return st.dictionaries(st.text(max_size=6), values, max_size=5)


configs = config_strategy(st.floats(allow_nan=False))
json_configs = config_strategy(st.floats(allow_nan=False, allow_infinity=False))  # what JSON carries exactly
unsupported = st.sampled_from([{1, 2}, frozenset(), b"bytes", bytearray(b"x"), object(), print, 1j, range(2)])


def _reordered(value, rng):
    """The same config with every dict's keys in a shuffled insertion order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _reordered(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


@given(configs, st.randoms())
def test_dict_order_never_changes_the_hash(config, rng):
    assert config_hash(_reordered(config, rng)) == config_hash(config)


@given(configs, st.text(max_size=6), st.integers())
def test_an_int_a_float_a_string_and_a_bool_of_the_same_value_hash_differently(config, name, number):
    variants = [number, float(number), str(number)] + ([bool(number)] if number in (0, 1) else [])
    hashes = {config_hash({**config, name: v}) for v in variants}
    assert len(hashes) == len(variants)


@given(configs, st.text(max_size=6), unsupported, st.integers(0, 2))
def test_unsupported_values_are_refused_at_any_depth_naming_the_place(config, name, bad, depth):
    value = bad
    for _ in range(depth):
        value = {"inner": [value]}
    with pytest.raises(UnhashableConfigError, match="config value at|config key"):
        config_hash({**config, name: value})


@settings(max_examples=10, deadline=None)
@given(st.lists(json_configs, min_size=1, max_size=10))
def test_hashes_are_the_same_in_a_fresh_process_with_another_hash_seed(batch):
    script = "import json, sys; from schemas.tables.hashing import config_hash; " \
             "print(json.dumps([config_hash(c) for c in json.load(sys.stdin)]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(batch), capture_output=True, text=True,
                            env=env, check=True, timeout=60)
    assert json.loads(result.stdout) == [config_hash(c) for c in batch]
