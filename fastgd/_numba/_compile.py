"""How every Numba kernel is compiled: one Python function, two machine-code variants.

A kernel body is written once with ``prange`` and compiled twice: a serial variant (prange runs
as range) for small arrays, where waking the thread pool costs more than it saves, and a
parallel variant for large ones (``serial_and_parallel`` for the norms; the rules' kernels,
_single.py and _many.py, compile a copy of their loops per flag or format combination through
``copy_with_constants``). All release the GIL, are cached on disk, and use the NumPy error
model (no ZeroDivisionError branch in the loop, so LLVM can vectorise). No fastmath: results
must match the reference within the tests' tolerances.
"""
import contextlib
import functools
import os
import threading
import types

import llvmlite.binding as _llvm
import numba
from numba import njit
from numba.core.compiler_lock import global_compiler_lock

# Same threshold as the Cython kernels (kernels/_parallel.pxd, which says how it was chosen).
PARALLEL_MIN = 32768

_OPTIONS = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


class _Runtime:
    """How parallel variants run in this process (set through fastgd._numba and fastgd.backends).

    serial_only: a child forked after a thread pool started (Numba's OpenMP layer kills such a
    child on its first parallel launch; libgomp would hang): every call runs the serial variant,
    which never touches the threading layer.
    num_threads: fastgd.set_num_threads's count (0: Numba's default). numba.set_num_threads is
    per thread, so it is re-applied in each thread that runs a parallel variant (``generation``
    tells a thread its copy is stale; checking that costs ~50 ns, numba.get_num_threads ~2.5 us).
    threadsafe: whether the launched threading layer accepts concurrent launches from several
    threads ('omp' and 'tbb' do; 'workqueue' aborts the process). Until the first launch has
    told, and forever under 'workqueue', parallel launches are serialised by ``lock``.
    """
    serial_only = False
    num_threads = 0
    generation = 0
    threadsafe = False
    lock = threading.Lock()
    local = threading.local()


def _run_parallel(fn, param, args):
    rt = _Runtime
    if rt.num_threads and getattr(rt.local, "generation", -1) != rt.generation:
        numba.set_num_threads(rt.num_threads)
        rt.local.generation = rt.generation
    if rt.threadsafe:
        return fn(param, *args)
    with rt.lock:
        out = fn(param, *args)
        rt.threadsafe = numba.threading_layer() != "workqueue"
    return out


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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _package_stamp():
    """Name, mtime and size of every module of this package, read once per process (every
    kernel's dispatcher asks at import)."""
    stamp = []
    for name in sorted(os.listdir(_PACKAGE_DIR)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(_PACKAGE_DIR, name))
            stamp.append((name, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def _stale_with_package(dispatcher):
    """Make ``dispatcher``'s disk cache go stale when any module of this package changes.

    Numba checks a cached kernel against its own source file only, but a kernel inlines helpers
    from _math.py and takes its options from here: after an edit there (or a ``git pull`` in an
    editable install that touches only _math.py), the cache would hand back machine code of the
    old helpers. The cache index stores a source stamp and recompiles when it differs; the stamp
    is widened to the whole package. (Private Numba attributes: if they move, the cache falls
    back to Numba's own per-file check.)
    """
    index = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if index is not None and hasattr(index, "_source_stamp"):
        index._source_stamp = (index._source_stamp, _package_stamp())
    return dispatcher


def copy_with_constants(body, name, options, **constants):
    """njit of a copy of ``body`` named ``name`` whose globals add ``constants`` (Numba
    freezes globals: integers and booleans become literals, branches on them fold). The name
    spells the constants: Numba's disk cache keys an entry by qualified name, not globals."""
    g = dict(body.__globals__)
    g.update(constants)
    fn = types.FunctionType(body.__code__, g, name)
    fn.__qualname__ = name
    fn.__doc__ = body.__doc__
    return _stale_with_package(njit(**options)(fn))


@contextlib.contextmanager
def wide_vectors():
    """Compile (and first run) what the block asks with LLVM's loop vectoriser choosing up to
    the register's width in the narrowest element type (-vectorizer-maximize-bandwidth), for
    the many kernels whose roles mix 16- and 32-bit formats.

    By default LLVM caps a loop's vector width at the register over its widest element: on a
    CPU whose tuning prefers 256-bit vectors (Intel's) that is 8 lanes of float32, and its
    cost model then picked 4 for AdamW with float32 params and bfloat16 states (one xmm
    register a step, 0.57 of the stream's bandwidth), where all-bf16 loops got 16. With the
    option it picks 16 there (measured on an Intel Xeon, 16M, one thread: 19.7 -> 15.1 ms).
    The option is LLVM's, process-wide: it is set only while Numba's compiler lock is held
    and cleared after, so no other code compiles with it. (LLVM cannot be asked an option's
    value: a process that had set it itself finds it off after fastgd's first call.)
    """
    with global_compiler_lock:
        _llvm.set_option("", "-vectorizer-maximize-bandwidth=true")
        try:
            yield
        finally:
            _llvm.set_option("", "-vectorizer-maximize-bandwidth=false")


def _entry_point(dispatcher, dtype):
    """The entry point of ``dispatcher``'s overload whose arrays are all C-contiguous 1-D arrays
    of ``dtype`` (the one the validated calls use), or None: the dispatcher is called then."""
    want = numba.from_dtype(dtype)
    for sig, cres in dispatcher.overloads.items():
        arrays = [a for a in sig if isinstance(a, numba.types.Array)]
        if arrays and all(a.dtype == want and a.ndim == 1 and a.layout == "C" for a in arrays):
            return cres.entry_point
    return None


def serial_and_parallel(body):
    """Compile ``body`` serially and in parallel; return a dispatcher choosing by length.

    The dispatcher's first argument must be the parameter array (its length picks the variant).
    """
    serial = _stale_with_package(njit(**_OPTIONS)(_renamed(body, "serial")))
    parallel = _stale_with_package(njit(parallel=True, **_OPTIONS)(_renamed(body, "parallel")))

    # The serial variant's compiled entry point by the arrays' item size (their dtype): calling it skips the
    # dispatcher's type resolution (1.15 us a call with 18 arguments, against 0.6 us), which
    # is most of a 1,000-element step. Safe because fastgd._validate has checked every array
    # (one float dtype, 1-D, C-contiguous) and the scalars are numbers the entry point unboxes.
    entry = {}

    def kernel(param, *args):
        if param.shape[0] < PARALLEL_MIN or _Runtime.serial_only:
            ep = entry.get(param.itemsize)     # float32 or float64 (an int key hashes fast)
            if ep is None:
                out = serial(param, *args)
                entry[param.itemsize] = _entry_point(serial, param.dtype) or serial
                return out
            return ep(param, *args)
        return _run_parallel(parallel, param, args)

    kernel.__name__ = body.__name__.lstrip("_")
    kernel.__doc__ = body.__doc__
    kernel.serial = serial
    kernel.parallel = parallel
    return kernel
