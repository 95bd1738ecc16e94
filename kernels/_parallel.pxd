# Shared plumbing of the Cython kernels: how an array is split across OpenMP threads.
#
# Every kernel splits [0, n) into one contiguous piece per thread (static, in order), so a
# thread streams through its own memory and never writes a cache line another thread writes.
# Elementwise rules are therefore bitwise identical at any thread count; reductions use
# fixed-size blocks instead (see norms.pyx) so their sum order does not depend on threads.
cimport openmp

# Below this many elements a kernel runs serially on the calling thread: waking the OpenMP team
# costs more than it saves (measured: bench/threshold.py).
cdef enum:
    PARALLEL_MIN = 32768
    # Piece boundaries are multiples of this many elements (64 bytes of float32) so two threads
    # never share a cache line.
    PIECE_ALIGN = 16


cdef inline int threads_for(Py_ssize_t n) noexcept nogil:
    """How many threads a kernel over n elements uses."""
    if n < PARALLEL_MIN:
        return 1
    return openmp.omp_get_max_threads()


cdef inline void piece(Py_ssize_t n, int nthreads, int t, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """The contiguous piece [lo, hi) of thread t among nthreads."""
    cdef Py_ssize_t per = (n + nthreads - 1) // nthreads
    per = (per + PIECE_ALIGN - 1) // PIECE_ALIGN * PIECE_ALIGN
    lo[0] = min(n, t * per)
    hi[0] = min(n, lo[0] + per)
