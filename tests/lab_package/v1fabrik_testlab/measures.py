"""The lab's own measures, registered for the ``measure`` role (one per neuron, one of the whole population)."""
import numpy as np

from pipeline.registry import register


@register("measure")
def mean_squared_error(responses, predictions, power=2):
    """Per neuron the mean of ``|response - prediction| ** power`` over trials; aggregate: its mean."""
    per_neuron = np.mean(np.abs(responses - predictions) ** power, axis=0)
    return per_neuron, float(per_neuron.mean())


@register("measure")
def population_correlation(responses, predictions, image_ids):
    """Aggregate only: correlation over images of the repeat-averaged population mean response and prediction."""
    images = np.unique(image_ids)
    mean = np.array([[responses[image_ids == i].mean(), predictions[image_ids == i].mean()] for i in images])
    return None, float(np.corrcoef(mean.T)[0, 1])
