"""The measure contract and the five SENSORIUM measures, against the model-level scores they replace."""
import numpy as np
import pytest

from pipeline import builder, registry
from pipeline.utility import measures, scores
from pipeline.utility.predictions import TierData, tier_data
from tests.unit.test_scores import PixelModel, repeat_loaders

SENSORIUM = {name: (fn, config) for name, fn, config in measures.SENSORIUM}


def _old(model, dataloaders, **kw):
    """Per-neuron values and aggregate of each SENSORIUM measure, the way the old score tables computed them."""
    correlations = scores.get_correlations(model, dataloaders, tier="test", **kw)
    oracles = scores.get_oracles(dataloaders, tier="test")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = correlations / oracles
    return {
        "test_correlation": (correlations, scores.get_correlations(model, dataloaders, tier="test", per_neuron=False)),
        "correlation_to_average": (scores.get_signal_correlations(model, dataloaders),
                                   scores.get_signal_correlations(model, dataloaders, per_neuron=False)),
        "feve": (scores.get_fev(model, dataloaders), scores.get_fev(model, dataloaders, per_neuron=False)),
        "oracle_correlation": (oracles, scores.get_oracles(dataloaders, per_neuron=False)),
        "fraction_oracle": (ratios, scores.get_fraction_oracles(model, dataloaders)),
    }


def test_sensorium_measures_give_the_old_numbers_from_one_forward_pass(monkeypatch):
    dataloaders, *_ = repeat_loaders()
    model = PixelModel()
    old = _old(model, dataloaders)
    passes = []
    monkeypatch.setattr("pipeline.utility.predictions.model_predictions",
                        lambda *args: passes.append(1) or scores.model_predictions(*args))
    (data,) = tier_data(model, dataloaders, "test").values()
    assert len(passes) == 1 and data.unit_ids.tolist() == list(range(101, 107))
    for name, (fn, config) in SENSORIUM.items():
        per_neuron, aggregate = measures.apply_measure(name, fn, data, config)
        np.testing.assert_array_equal(per_neuron, old[name][0], err_msg=name)
        assert aggregate == old[name][1] or np.isnan(aggregate) and np.isnan(old[name][1]), name
    assert not np.isfinite(old["feve"][0][-1]) and old["test_correlation"][0][-1] == 0  # the constant neuron
    assert {builder.fn_name(fn) for fn, _ in SENSORIUM.values()} <= set(registry.registered("measure"))


def test_undefined_aggregates_are_nan_as_before():
    dataloaders, *_ = repeat_loaders()
    (data,) = tier_data(PixelModel(), dataloaders, "test").values()
    _, aggregate = measures.apply_measure("feve", measures.feve, data, {"fev_threshold": 2.0})
    assert np.isnan(aggregate)
    assert np.isnan(scores.get_fev(PixelModel(), dataloaders, per_neuron=False, fev_threshold=2.0))


def _data(n_neurons=3, image_ids=True):
    rng = np.random.default_rng(0)
    return TierData("k", np.arange(n_neurons), np.arange(8), np.repeat([1, 2], 4) if image_ids else None,
                    rng.normal(size=(8, n_neurons)), rng.normal(size=(8, n_neurons)))


@pytest.mark.parametrize("result, says", [
    (0.5, "measure m returned float 0.5; it must return (per-neuron values or None, aggregate)"),
    ((None, "high"), "measure m returned the aggregate 'high'; it must be a number"),
    ((None, np.ones(3)), "measure m returned the aggregate array"),
    ((np.ones(2), 1.0), "measure m returned per-neuron values of shape (2,) and dtype float64; data key k needs 3 "
                        "numbers (or None)"),
    ((np.array(["a", "b", "c"]), 1.0), "dtype <U1"),
])
def test_a_measure_breaking_its_contract_is_named(result, says):
    with pytest.raises(builder.ContractError) as error:
        measures.apply_measure("m", lambda responses, predictions: result, _data(), {})
    assert says in str(error.value) and "\n" not in str(error.value)


def test_image_ids_go_to_measures_that_name_them_and_configs_are_checked():
    seen = {}

    def by_image(responses, predictions, image_ids, scale=1):
        seen["ids"] = image_ids
        return None, scale * 2

    assert measures.apply_measure("m", by_image, _data(), {"scale": 3}) == (None, 6.0)
    assert seen["ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="measure m needs the trials' image ids, but data key k has no "
                                         "meta/trials/frame_image_id"):
        measures.apply_measure("m", by_image, _data(image_ids=False), {})
    measures.check_config("m", by_image, {"scale": 2})
    with pytest.raises(TypeError, match=r"measure m cannot be called with the config \{'scal': 2\}: got an unexpected "
                                        "keyword argument 'scal'"):
        measures.check_config("m", by_image, {"scal": 2})
    with pytest.raises(ValueError, match="sets 'image_ids', which v1fabrik passes itself"):
        measures.check_config("m", by_image, {"image_ids": [1]})


def test_several_data_keys_pool_their_aggregates_by_neurons():
    assert measures.pooled_aggregate([0.5], [10]) == 0.5
    assert measures.pooled_aggregate([0.2, 0.5], [10, 30]) == pytest.approx(0.425, abs=1e-15)
    assert np.isnan(measures.pooled_aggregate([0.2, float("nan")], [10, 30]))
    assert measures.pooled_aggregate([float("-inf")], [10]) == float("-inf")  # stored as NULL by Score
