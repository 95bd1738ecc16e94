"""Numba kernels: the twins of kernels/*.pyx, with the same names, signatures and maths."""
import numba

from .adagrad import adagrad, rmsprop  # noqa: F401
from .adam import adam  # noqa: F401
from .adam_variants import adamax, nadam, radam  # noqa: F401
from .lion import lion  # noqa: F401
from .norms import accumulate, clamp, norm_partial, scale  # noqa: F401
from .sgd import sgd  # noqa: F401


def set_num_threads(n):
    """Threads of Numba's parallel kernels (capped at NUMBA_NUM_THREADS, fixed at import)."""
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    return numba.get_num_threads()
