"""How every Numba kernel is compiled: one Python function, two machine-code variants.

A kernel body is written once with ``prange``. ``serial_and_parallel`` compiles it twice: a
serial variant (prange runs as range) for small arrays, where waking the thread pool costs
more than it saves, and a parallel variant for large ones. Both release the GIL, are cached
on disk, and use the NumPy error model (no ZeroDivisionError branch in the loop, so LLVM can
vectorise). No fastmath: results must match the reference within the tests' tolerances.
"""
import types

from numba import njit

# Same threshold as the Cython kernels (kernels/_parallel.pxd), measured by bench/threshold.py.
PARALLEL_MIN = 32768

_OPTIONS = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


def _renamed(body, variant):
    """A copy of ``body`` with its own qualified name.

    Numba's on-disk cache is keyed by the function's qualified name, not by its compile options:
    without this, the serial variant can load the parallel variant's cached machine code.
    """
    fn = types.FunctionType(body.__code__, body.__globals__, f"{body.__name__}_{variant}",
                            body.__defaults__, body.__closure__)
    fn.__qualname__ = f"{body.__qualname__}_{variant}"
    fn.__doc__ = body.__doc__
    return fn


def serial_and_parallel(body):
    """Compile ``body`` serially and in parallel; return a dispatcher choosing by length.

    The dispatcher's first argument must be the parameter array (its length picks the variant).
    """
    serial = njit(**_OPTIONS)(_renamed(body, "serial"))
    parallel = njit(parallel=True, **_OPTIONS)(_renamed(body, "parallel"))

    def kernel(param, *args):
        if param.shape[0] < PARALLEL_MIN:
            return serial(param, *args)
        return parallel(param, *args)

    kernel.__name__ = body.__name__.lstrip("_")
    kernel.__doc__ = body.__doc__
    kernel.serial = serial
    kernel.parallel = parallel
    return kernel
