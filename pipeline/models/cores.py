"""The stacked 2D convolutional core shared by all data keys (neuralpredictors' ``Stacked2dCore``)."""
from collections import OrderedDict

import torch
from torch import nn

from . import fused
from .cpu_kernels import applies as kernels_apply
from .regularizers import INPUT_REGULARIZERS


class DepthSeparableConv2d(nn.Sequential):
    """1×1 conv, depthwise k×k conv, 1×1 conv, with nothing in between."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        self.in_depth_conv = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.spatial_conv = nn.Conv2d(
            out_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            groups=out_channels,
        )
        self.out_depth_conv = nn.Conv2d(out_channels, out_channels, 1, bias=bias)

    def forward(self, x):
        x = self.in_depth_conv(x)
        if kernels_apply(x) and fused.depthwise_applies(self.spatial_conv):
            x = fused.depthwise_conv(self.spatial_conv, x)
        else:
            x = self.spatial_conv(x)
        return self.out_depth_conv(x)


def run_layer(layer, x):
    """One conv → [BatchNorm] → [ELU] layer; BatchNorm + ELU as one fused kernel where it applies."""
    norm, nonlinearity = getattr(layer, "norm", None), getattr(layer, "nonlin", None)
    if not fused.batch_norm_elu_applies(norm, nonlinearity):
        return layer(x)
    x = layer[0](x)  # under autocast, a float32 input can give a bfloat16 output
    return fused.batch_norm_elu(x, norm) if kernels_apply(x) else nonlinearity(norm(x))


class Stacked2dCore(nn.Module):
    """A stack of conv → BatchNorm → ELU layers; returns the layers selected by ``stack``.

    Layer 0 is a plain ``input_kern`` conv (zero padding unless ``pad_input``); the hidden layers are
    plain or depth-separable ``hidden_kern`` convs with "same" padding. With ``batch_norm`` the BN is
    affine and the convs have no bias; without it, convs get a bias iff ``bias``. Parameter names
    match neuralpredictors 0.3.0, so its state dicts load strictly.

    Args:
        input_channels: channels of the input images.
        hidden_channels: feature maps per layer.
        input_kern: kernel size of layer 0.
        hidden_kern: kernel size of the hidden layers (int, or one per hidden layer).
        layers: number of layers.
        gamma_input: weight of the input-filter smoothness regularizer.
        skip: if > 1, each hidden layer sees the concatenated outputs of the last ``skip`` layers.
        final_nonlinearity: whether the last layer has an ELU too.
        bias: conv biases (only used where there is no BatchNorm in layer 0; always in hidden convs).
        momentum: BatchNorm momentum (PyTorch convention: weight of the newest batch).
        pad_input: zero-pad layer 0 to keep the image size.
        hidden_padding: padding of the hidden convs; None means "same" for the first hidden kernel.
        batch_norm: add BatchNorm after each conv.
        hidden_dilation: dilation of the hidden convs.
        laplace_padding: padding of the Laplace filter in the input regularizer (None: same size).
        input_regularizer: "LaplaceL2norm" or "LaplaceL2".
        stack: which layers' outputs are concatenated: None for all, an int ``s`` for
            ``layers[s:]``, or a list of layer indices.
        use_avg_reg: average instead of sum inside the input regularizer.
        depth_separable: hidden layers are depth-separable convs.
        linear: no nonlinearities at all (the LN baseline).
        channels_last: run the convolutions in channels-last memory format on every device. On CPU
            the core always does (faster in every measured case, benchmarks/README.md §2).
    """

    def __init__(
        self,
        input_channels,
        hidden_channels,
        input_kern,
        hidden_kern,
        layers=3,
        gamma_input=0.0,
        skip=0,
        final_nonlinearity=True,
        bias=True,
        momentum=0.1,
        pad_input=True,
        hidden_padding=None,
        batch_norm=True,
        hidden_dilation=1,
        laplace_padding=0,
        input_regularizer="LaplaceL2norm",
        stack=None,
        use_avg_reg=True,
        depth_separable=False,
        linear=False,
        channels_last=False,
    ):
        super().__init__()
        if input_regularizer not in INPUT_REGULARIZERS:
            raise ValueError(
                f"input_regularizer={input_regularizer!r} is not one of {sorted(INPUT_REGULARIZERS)}"
            )
        if isinstance(hidden_kern, int):
            hidden_kern = [hidden_kern] * (layers - 1)
        if len(hidden_kern) != layers - 1:
            raise ValueError(f"hidden_kern has {len(hidden_kern)} entries but the core has {layers - 1} hidden layers")
        self._input_weights_regularizer = INPUT_REGULARIZERS[input_regularizer](padding=laplace_padding)
        self.gamma_input = gamma_input
        self.use_avg_reg = use_avg_reg
        self.skip = skip
        self.channels_last = channels_last
        if stack is None:
            self.stack = list(range(layers))
        elif isinstance(stack, int):
            self.stack = list(range(layers))[stack:]
        else:
            self.stack = list(stack)

        def block(conv_name, conv, is_last):
            layer = OrderedDict([(conv_name, conv)])
            if batch_norm:
                layer["norm"] = nn.BatchNorm2d(hidden_channels, momentum=momentum)
            if not linear and (final_nonlinearity or not is_last):
                layer["nonlin"] = nn.ELU(inplace=True)
            return nn.Sequential(layer)

        self.features = nn.Sequential()
        first = nn.Conv2d(
            input_channels,
            hidden_channels,
            input_kern,
            padding=input_kern // 2 if pad_input else 0,
            bias=bias and not batch_norm,
        )
        self.features.add_module("layer0", block("conv", first, layers == 1))
        if hidden_padding is None and layers > 1:
            # As in the reference, the first hidden kernel fixes the padding of every hidden layer.
            hidden_padding = ((hidden_kern[0] - 1) * hidden_dilation + 1) // 2
        for index in range(1, layers):
            conv_type, conv_name = (DepthSeparableConv2d, "ds_conv") if depth_separable else (nn.Conv2d, "conv")
            conv = conv_type(
                hidden_channels * (min(skip, index) if skip > 1 else 1),
                hidden_channels,
                hidden_kern[index - 1],
                padding=hidden_padding,
                dilation=hidden_dilation,
                bias=bias,
            )
            self.features.add_module(f"layer{index}", block(conv_name, conv, index == layers - 1))
        self._initialize()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _initialize(self):
        """Xavier-normal conv weights, zero conv biases; BatchNorm keeps PyTorch's defaults."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        if self.channels_last or x.device.type == "cpu":
            # empty_like + copy_ sets channels-last strides even for one input channel, where
            # ``contiguous`` would keep NCHW and the convolutions would follow it.
            x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        outputs = []
        for index, layer in enumerate(self.features):
            if index > 0 and self.skip > 1:
                x = torch.cat(outputs[-min(self.skip, index):], dim=1)
            x = run_layer(layer, x)
            outputs.append(x)
        if len(self.stack) == 1:
            return outputs[self.stack[0]]
        return torch.cat([outputs[i] for i in self.stack], dim=1)

    def laplace(self):
        """Smoothness of the first layer's filters (the input regularizer without its weight)."""
        return self._input_weights_regularizer(self.features.layer0.conv.weight, avg=self.use_avg_reg)

    def regularizer(self):
        """``gamma_input`` × the input regularizer."""
        return self.gamma_input * self.laplace()

    @property
    def outchannels(self):
        """Channels of the output: ``hidden_channels`` × the number of stacked layers."""
        return len(self.stack) * self.features.layer0.conv.out_channels
