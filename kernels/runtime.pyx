"""OpenMP runtime of the Cython backend: thread count, fork safety, and what the build has.

The settings every kernel reads (kernels/_runtime.h) live here, once per process, and reach the
other kernel modules through the capsule ``_RUNTIME``.

Fork: libgomp's thread pool does not survive fork(); a forked child that starts an OpenMP team
waits forever for threads that no longer exist. A C-level fork handler registered at import
marks a child forked after any team started, and from then on every kernel runs serially on the
calling thread (never entering libgomp). The parent keeps its threads and its speed.
"""
cimport openmp
from cpython.pycapsule cimport PyCapsule_New


cdef extern from "_runtime.h" nogil:
    ctypedef struct fastgd_runtime_t:
        int num_threads
        int pool_started
        int forked_serial
    const char* FASTGD_RUNTIME_CAPSULE

cdef extern from *:
    """
    #include <pthread.h>
    #include "_runtime.h"
    static fastgd_runtime_t fastgd_runtime_state = {0, 0, 0};
    /* Runs in the child of every fork() (os.fork, multiprocessing, C code), before any Python. */
    static void fastgd_runtime_after_fork_in_child(void) {
        if (fastgd_runtime_state.pool_started)
            fastgd_runtime_state.forked_serial = 1;
    }
    static int fastgd_runtime_register_fork_handler(void) {
        return pthread_atfork(NULL, NULL, fastgd_runtime_after_fork_in_child);
    }
    """
    fastgd_runtime_t fastgd_runtime_state
    int fastgd_runtime_register_fork_handler()


if fastgd_runtime_register_fork_handler() != 0:
    raise OSError("fastgd: pthread_atfork failed; the Cython kernels would not be fork-safe")

_RUNTIME = PyCapsule_New(&fastgd_runtime_state, FASTGD_RUNTIME_CAPSULE, NULL)


def set_num_threads(int n):
    """Threads every parallel Cython kernel uses from now on, in every thread of the process."""
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {n}")
    fastgd_runtime_state.num_threads = n
    openmp.omp_set_num_threads(n)  # also this thread's OpenMP default, as before


def get_num_threads():
    """Threads a parallel Cython kernel uses now (1 in a child forked after a team started)."""
    if fastgd_runtime_state.forked_serial:
        return 1
    if fastgd_runtime_state.num_threads > 0:
        return fastgd_runtime_state.num_threads
    return openmp.omp_get_max_threads()


def parallel_started():
    """Whether a kernel of this process has started an OpenMP team (a libgomp thread pool)."""
    return bool(fastgd_runtime_state.pool_started)


def force_serial():
    """Run every kernel serially from now on (fastgd calls it in a child forked after another
    library, e.g. Numba's OpenMP layer, started a libgomp pool this module did not see)."""
    fastgd_runtime_state.forked_serial = 1


def forked_serial():
    """Whether kernels run serially because this process was forked after a pool started."""
    return bool(fastgd_runtime_state.forked_serial)


def openmp_version():
    """The _OPENMP date the extension was compiled against (e.g. 201511)."""
    cdef int v = 0
    v = _openmp_macro()
    return v


cdef extern from *:
    """
    #ifdef _OPENMP
    static int _openmp_macro(void) { return _OPENMP; }
    #else
    static int _openmp_macro(void) { return 0; }
    #endif
    """
    int _openmp_macro()


from _formats cimport fgd_format_paths


def format_paths():
    """Which instructions this build converts bfloat16/float16 with (kernels/_formats.h, for
    `fastgd info`), e.g. "bfloat16: AVX-512 BF16 (vcvtneps2bf16); float16: AVX-512F ..."."""
    return fgd_format_paths().decode("ascii")
