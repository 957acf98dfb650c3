"""Builds and loads the fused float32 CPU kernels of ``cpu_kernels.cpp`` (once per machine type).

The first use on a machine compiles them with the system's C++ compiler (about a minute; cached by
torch under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``, one build per CPU
instruction set, so a shared home folder serves AVX2 and AVX-512 hosts alike). Without a compiler,
or with ``V1FABRIK_CPU_KERNELS=0``, ``ops()`` is None and the models use torch's own operators
(same mathematics, slower on CPU).
"""
import contextlib
import functools
import logging
import os
import shutil
import sysconfig
from pathlib import Path

import torch
from torch.utils import cpp_extension

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
ISA_FLAGS = {
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}


@functools.cache
def ops():
    """The ``torch.ops.v1fabrik`` kernels, built on first use; None where they cannot be built or are switched off."""
    if os.environ.get("V1FABRIK_CPU_KERNELS", "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if shutil.which("ninja") is None:  # torch builds with ninja: the pip package's, in this environment's scripts folder
        os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")
    try:
        cpp_extension.load(
            name=f"v1fabrik_cpu_kernels_{capability.lower().replace(' ', '_')}",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-ffp-contract=off", "-fopenmp", *ISA_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # no compiler, no headers, a failed build: fall back to torch's operators
        logger.warning("the fused CPU kernels could not be built (%s: %s); using torch's operators, which are "
                       "slower on CPU", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None
    return torch.ops.v1fabrik


_switched_off = False


@contextlib.contextmanager
def switched_off():
    """Within this block the models use torch's operators only (for comparisons)."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def applies(x):
    """Whether the fused kernels serve tensor ``x``: float32 on the CPU, kernels available and not switched
    off, and not inside ``torch.compile`` (which generates its own kernels from torch's operators)."""
    if torch.compiler.is_compiling() or _switched_off:
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and ops() is not None
