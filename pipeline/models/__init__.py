"""Models: the SENSORIUM baseline CNN's core, readouts, shifters, encoder and model function."""
from .baseline_cnn import stacked_core_full_gauss_readout

__all__ = ["stacked_core_full_gauss_readout"]
