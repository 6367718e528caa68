"""rt2_jax: RT-2 vision-language-action models in JAX/Flax.

The package root imports nothing heavy: `rt2_jax.actions`, `rt2_jax.tokenizer` and `rt2_jax.sim`
are usable on a robot-side machine without JAX training code or TensorFlow.
"""

import glob
import importlib.util
import os

__version__ = "0.1.0"

_TPU_PCI_VENDOR = "0x1ae0"   # Google


def _machine_has_accelerator() -> bool:
    """TPU chips on the PCI bus, or NVIDIA / AMD GPU device nodes."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _TPU_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _cpu_only_when_libtpu_has_no_tpu() -> None:
    """With libtpu installed (the `tpu` extra, for ahead-of-time compiles) on a machine with no
    accelerator, JAX would initialize libtpu's backend and print errors about TPU hostnames on
    every command. Choose the CPU backend there, unless JAX_PLATFORMS says otherwise."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    if not _machine_has_accelerator():
        os.environ["JAX_PLATFORMS"] = "cpu"


_cpu_only_when_libtpu_has_no_tpu()
