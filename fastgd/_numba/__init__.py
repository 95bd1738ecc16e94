"""Numba kernels: the twins of kernels/*.pyx, with the same names, signatures and maths."""
import sys

import numba

from .adagrad import adagrad, adagrad_many  # noqa: F401
from ._compile import _Runtime
from .adam import adam, adam_many  # noqa: F401
from .adamax import adamax, adamax_many  # noqa: F401
from .lion import lion, lion_many  # noqa: F401
from .nadam import nadam, nadam_many  # noqa: F401
from .norms import accumulate, clamp, norm_partial, scale  # noqa: F401
from .radam import radam, radam_many  # noqa: F401
from .rmsprop import rmsprop, rmsprop_many  # noqa: F401
from .sgd import sgd, sgd_many  # noqa: F401


def set_num_threads(n):
    """Threads of Numba's parallel kernels (capped at NUMBA_NUM_THREADS, fixed at import), in
    every thread: numba.set_num_threads is per thread, so each thread applies it on its next
    parallel call (_compile._run_parallel). Applied lazily: numba.set_num_threads launches the
    threading layer, and a process that has launched it cannot give a forked child threads."""
    _Runtime.num_threads = min(n, numba.config.NUMBA_NUM_THREADS)
    _Runtime.generation += 1


def get_num_threads():
    if _Runtime.serial_only:
        return 1
    if _Runtime.num_threads:
        return _Runtime.num_threads
    return numba.get_num_threads() if parallel_started() else numba.config.NUMBA_NUM_THREADS


# --- fork safety (fastgd.backends calls these in a forked child) ---------------------------------

def parallel_started():
    """Whether Numba's threading layer has been launched in this process (by fastgd or not)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(parallel is not None and getattr(parallel, "_is_initialized", False))


def force_serial():
    """Run only the serial variants from now on (a child forked after a pool started)."""
    _Runtime.serial_only = True


def forked_serial():
    return _Runtime.serial_only
