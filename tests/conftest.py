"""Test-wide settings: CPU only (libtpu may be installed for ahead-of-time compiles), and one
persistent XLA compilation cache per test run."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Many tests compile the same tiny-model programs (train step, decode loop, export) again, in
# new closures, new processes and both xdist workers; a persistent compilation cache turns those
# repeats into loads. The directory is made fresh for each run by the first process that loads
# this file (pytest's main process, before it starts the workers, which inherit it like any
# subprocess a test starts) and removed when that process exits, so runs never share entries.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="rt2_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
