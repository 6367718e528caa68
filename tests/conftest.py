"""Test-wide settings: CPU only (libtpu may be installed for ahead-of-time compiles)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
