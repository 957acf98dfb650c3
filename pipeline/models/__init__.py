"""Models: the SENSORIUM baseline CNN's core, readouts, shifters, encoder and builder."""
from .builders import stacked_core_full_gauss_readout

__all__ = ["stacked_core_full_gauss_readout"]
