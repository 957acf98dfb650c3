"""The encoder that turns core + readout (+ shifter) into non-negative firing rates."""
import torch
from torch import nn
from torch.nn import functional as F

from .readouts import resolve_data_key

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class FiringRateEncoder(nn.Module):
    """``ELU(readout(core(images), shift) + elu_offset) + 1`` for one data key at a time.

    The core is shared by all data keys; the readout and the shifter (optional) hold one module
    per data key.

    Args:
        core: maps images (B, C, H, W) to a feature map.
        readout: a ModuleDict-like readout container with ``forward(x, data_key=..., shift=...)``.
        shifter: a ModuleDict of per-key shifters fed with ``pupil_center``, or None.
        elu_offset: added before the final ELU.
        autocast_dtype: opt-in fast path: run the forward pass under ``torch.autocast`` with
            'bfloat16' or 'float16'; the rates are returned as float32. None keeps float32 numerics.
    """

    def __init__(self, core, readout, shifter=None, elu_offset=0.0, autocast_dtype=None):
        super().__init__()
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None or one of {list(AUTOCAST_DTYPES)}, got {autocast_dtype!r}")
        self.core = core
        self.readout = readout
        self.shifter = shifter
        self.offset = elu_offset
        self.autocast_dtype = autocast_dtype
        self.core_frozen = False

    def freeze_core(self) -> "FiringRateEncoder":
        """Train only the readouts and shifters from now on: the core gets no gradients and stays in eval mode,
        so its BatchNorm statistics do not move either (the reference's ``detach_core`` still updates them)."""
        self.core.requires_grad_(False)
        self.core_frozen = True
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.core_frozen:
            self.core.eval()
        return self

    def forward(
        self,
        inputs=None,
        *,
        data_key=None,
        pupil_center=None,
        trial_idx=None,
        shift=None,
        detach_core=False,
        sample=None,
        noise=None,
        **batch_fields,
    ):
        """Firing rates (B, N).

        Called as the trainer does, ``model(images, data_key=k, **batch._asdict())``: the batch's
        ``pupil_center`` feeds the shifter; other batch fields (``images``, ``responses``,
        ``behavior``, ...) are accepted and ignored (behaviour enters as image channels). When
        ``inputs`` is omitted, ``images`` is used.

        Args:
            shift: an explicit (B, 2) grid shift. Unlike the reference seed (which overwrote it,
                neuralpredictors issue #229), a given shift wins over the shifter's.
            detach_core: stop gradients from the readout into the core.
            sample: force (True) or forbid (False) position sampling; None follows train/eval mode.
            noise: standard-normal draws (B, N, 1, 2) for the readout's position sampling.
        """
        if inputs is None:
            if "images" not in batch_fields:
                raise TypeError("FiringRateEncoder needs the images, positionally or as images=")
            inputs = batch_fields["images"]
        data_key = resolve_data_key(self.readout, data_key)
        if self.shifter is not None and shift is None:
            if pupil_center is None:
                raise ValueError(f"pupil_center is required: the model has a shifter for {data_key!r}")
            shift = self.shifter[data_key](pupil_center, trial_idx)
        if self.autocast_dtype is None:
            x = self._core_and_readout(inputs, data_key, shift, detach_core, sample, noise)
        else:
            with torch.autocast(inputs.device.type, dtype=AUTOCAST_DTYPES[self.autocast_dtype]):
                x = self._core_and_readout(inputs, data_key, shift, detach_core, sample, noise).float()
        return F.elu(x + self.offset) + 1

    def _core_and_readout(self, inputs, data_key, shift, detach_core, sample, noise):
        x = self.core(inputs)
        if detach_core:
            x = x.detach()
        return self.readout(x, data_key=data_key, shift=shift, sample=sample, noise=noise)

    def regularizer(self, data_key=None, detach_core=False):
        """Core regularizer (optionally detached) plus the data key's readout regularizer."""
        core_term = self.core.regularizer()
        return (core_term.detach() if detach_core else core_term) + self.readout.regularizer(data_key)
