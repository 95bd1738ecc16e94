"""The one registry of backends: which exist, which can be used (and why not), which is active.

Backends:
  cython  compiled kernels from kernels/*.pyx (OpenMP); the default when it imports
  numba   the same kernels in Numba (prange); the fallback
  numpy   the reference (fastgd._reference), slow and readable

Every backend exposes the same kernel names and signatures. ``kernel(name)`` returns the active
backend's function; fastgd.functional calls it after validation. The default is cython, else
numba; the environment variable FASTGD_BACKEND overrides it.
"""
import contextlib
import importlib
import json
import os
import sys
import threading
import warnings

ORDER = ("cython", "numba", "numpy")

# The module of each backend; every kernel is an attribute of it with the same name and
# signature in all three (fastgd/_cython/kernels.py and fastgd/_numba/__init__.py gather them).
_MODULES = {
    "cython": "fastgd._cython.kernels",
    "numba": "fastgd._numba",
    "numpy": "fastgd._reference",
}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used here; the message says why."""


class _Backend:
    def __init__(self, name):
        self.name = name
        self.module = None
        self.error = None
        self._lock = threading.Lock()

    def load(self):
        """Import the backend's modules once; remember why it failed if it did."""
        with self._lock:
            if self.module is None and self.error is None:
                try:
                    if self.name == "cython":
                        _check_cython_build()
                    module = importlib.import_module(_MODULES[self.name])
                    if _threads["n"] is not None and hasattr(module, "set_num_threads"):
                        module.set_num_threads(_threads["n"])
                    if _fork["serial"] and hasattr(module, "force_serial"):
                        module.force_serial()  # first loaded in a child forked after a pool started
                    self.module = module
                except Exception as exc:  # any import failure makes the backend unusable, with reason
                    self.error = f"{type(exc).__name__}: {exc}"
        return self.module is not None


def build_info():
    """How the Cython extension was compiled (setup.py writes it), or None if it was not."""
    path = os.path.join(os.path.dirname(__file__), "_cython", "build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cpu_simd_flags():
    """SIMD features of this CPU as /proc/cpuinfo names them (empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _check_cython_build():
    """Refuse an extension built with -march=native for a CPU with features this one lacks.

    Importing it would die with an illegal instruction; refusing falls back to numba instead.
    """
    info = build_info()
    if not info or not info.get("build_cpu_simd_flags"):
        return
    here = cpu_simd_flags()
    if not here:
        return
    missing = sorted(set(info["build_cpu_simd_flags"]) - here)
    if missing:
        raise BackendUnavailable(
            f"the extension was built for a CPU with {', '.join(missing)}, which this CPU lacks; "
            "rebuild it here (pip install -e . again) or build portably with FASTGD_MARCH=portable")


_BACKENDS = {name: _Backend(name) for name in ORDER}
_threads = {"n": None}
_state = {"active": None, "warned": False}
_kernels = {}


def backend_status():
    """{name: (usable, reason)} for every backend; importing them if not done yet."""
    out = {}
    for name in ORDER:
        b = _BACKENDS[name]
        ok = b.load()
        out[name] = (ok, None if ok else b.error)
    return out


def available_backends():
    """Names of the usable backends, fastest first, e.g. ('cython', 'numba', 'numpy')."""
    return tuple(name for name, (ok, _) in backend_status().items() if ok)


def _check_name(name):
    if not isinstance(name, str) or name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(ORDER)}; got {name!r}")


def _default():
    env = os.environ.get("FASTGD_BACKEND", "").strip().lower()
    if env:
        _check_name(env)
        if not _BACKENDS[env].load():
            raise BackendUnavailable(f"FASTGD_BACKEND={env} but it is unusable: {_BACKENDS[env].error}")
        return env
    if _BACKENDS["cython"].load():
        return "cython"
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"fastgd: the Cython extension is unusable ({_BACKENDS['cython'].error}); "
                      "using the numba backend", RuntimeWarning, stacklevel=3)
    return "numba"


def get_backend():
    """Name of the active backend."""
    if _state["active"] is None:
        _state["active"] = _default()
    return _state["active"]


def set_backend(name):
    """Make ``name`` ('cython', 'numba' or 'numpy') the active backend for every later call."""
    _check_name(name)
    if not _BACKENDS[name].load():
        raise BackendUnavailable(f"backend {name!r} is unusable: {_BACKENDS[name].error}")
    _state["active"] = name


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend('numba'): ...`` runs the block on that backend, then restores the old one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _state["active"] = previous


def kernel(name, backend=None):
    """The function ``name`` of the active backend (or of ``backend``)."""
    backend = backend or _state["active"] or get_backend()
    key = (backend, name)
    fn = _kernels.get(key)
    if fn is None:
        b = _BACKENDS[backend]
        if not b.load():
            raise BackendUnavailable(f"backend {backend!r} is unusable: {b.error}")
        fn = getattr(b.module, name, None)
        if fn is None:
            raise NotImplementedError(f"backend {backend!r} has no kernel {name!r}")
        _kernels[key] = fn
    return fn


# --- threads: one setting for both compiled backends --------------------------------------------

def _max_threads():
    return os.cpu_count() or 1


def set_num_threads(n):
    """Threads the parallel kernels of every backend use (both OpenMP and Numba)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive int; got {n!r}")
    _threads["n"] = n
    _apply_threads()


def get_num_threads():
    """Threads the parallel kernels use (default: all cores; 1 in a child forked after a
    parallel kernel ran, see _after_fork_in_child)."""
    if _fork["serial"]:
        return 1
    return _threads["n"] or _max_threads()


@contextlib.contextmanager
def use_num_threads(n):
    """``with use_num_threads(1): ...`` runs the block with ``n`` threads, then restores the
    previous setting exactly (also "never set": all cores)."""
    previous = _threads["n"]
    set_num_threads(n)
    try:
        yield
    finally:
        _threads["n"] = previous
        _apply_threads()


def _apply_threads():
    # Backends not loaded yet pick the setting up when they load (_Backend.load).
    for name in ("cython", "numba"):
        module = _BACKENDS[name].module
        if module is not None:
            module.set_num_threads(_threads["n"] or _max_threads())


# --- fork safety ------------------------------------------------------------------------------
# Both compiled backends sit on thread pools that do not survive fork(): libgomp's (Cython, and
# Numba's 'omp' layer) would hang a child that starts a team, and Numba's 'omp' layer kills such a
# child outright. So a child forked after any pool started runs every kernel serially, on the
# calling thread, with the same results (the kernels are bitwise identical at any thread count).
# A child forked before any parallel kernel ran (e.g. a multiprocessing pool created first, or a
# 'forkserver' child) keeps parallel kernels; 'spawn' children start fresh. The Cython runtime
# also marks its own pool from a C-level pthread_atfork handler (kernels/runtime.pyx); this
# handler makes the two backends agree, because they share one libgomp.

_fork = {"serial": False}


def _after_fork_in_child():
    modules = [_BACKENDS[name].module for name in ("cython", "numba")]
    modules = [m for m in modules if m is not None]
    numba_parallel = sys.modules.get("numba.np.ufunc.parallel")
    started = (_fork["serial"] or any(m.parallel_started() for m in modules)
               or bool(getattr(numba_parallel, "_is_initialized", False)))
    if started:
        _fork["serial"] = True
        for m in modules:
            m.force_serial()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
