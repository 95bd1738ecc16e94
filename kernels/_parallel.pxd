# Shared plumbing of the Cython kernels: how an array is split across OpenMP threads.
#
# Every kernel splits [0, n) into one contiguous piece per thread (static, in order), so a
# thread streams through its own memory and never writes a cache line another thread writes.
# Elementwise rules are therefore bitwise identical at any thread count; reductions use
# fixed-size blocks instead (see norms.pyx) so their sum order does not depend on threads.
cimport openmp

# Below this many elements a kernel runs serially on the calling thread: waking the OpenMP team
# costs more than it saves (measured when chosen: below it a 2-thread step was slower than a
# serial one; `fastgd bench --sizes 16e3,32e3,64e3 --threads 1,2` re-measures it).
cdef enum:
    PARALLEL_MIN = 32768
    # Piece boundaries are multiples of this many elements (64 bytes of float32) so two threads
    # never share a cache line.
    PIECE_ALIGN = 16


cdef extern from "_runtime.h" nogil:
    ctypedef struct fastgd_runtime_t:
        int num_threads
        int pool_started
        int forked_serial

# The process-wide settings (kernels/_runtime.h), found once per module through runtime.pyx's
# capsule (the first parallel call takes the GIL for that lookup, then never again). If the
# runtime cannot be reached (a broken install), kernels run serially: slow but never unsafe.
cdef extern from *:
    """
    #include "_runtime.h"
    static fastgd_runtime_t *fastgd_rt_ptr = NULL;
    static fastgd_runtime_t fastgd_rt_unreachable = {1, 0, 1};
    static fastgd_runtime_t *fastgd_rt(void) {
        fastgd_runtime_t *rt = __atomic_load_n(&fastgd_rt_ptr, __ATOMIC_ACQUIRE);
        if (rt == NULL) {
            PyGILState_STATE gil = PyGILState_Ensure();
            PyObject *module = PyImport_ImportModule(FASTGD_RUNTIME_MODULE);
            rt = module ? (fastgd_runtime_t *)PyCapsule_Import(FASTGD_RUNTIME_CAPSULE, 0) : NULL;
            Py_XDECREF(module);
            if (rt == NULL) {
                PyErr_Clear();
                rt = &fastgd_rt_unreachable;
            }
            PyGILState_Release(gil);
            __atomic_store_n(&fastgd_rt_ptr, rt, __ATOMIC_RELEASE);
        }
        return rt;
    }
    """
    fastgd_runtime_t* fastgd_rt() nogil


cdef inline int threads_for(Py_ssize_t n) noexcept nogil:
    """How many threads a kernel over n elements uses.

    1 below PARALLEL_MIN, and 1 in a process forked after an OpenMP team started: libgomp's pool
    does not survive fork (its threads are gone, a team would wait for them forever), and a
    kernel that runs with 1 thread never enters libgomp. Else fastgd.set_num_threads's count
    (process-wide), or OpenMP's default.
    """
    cdef fastgd_runtime_t* rt
    cdef int t
    if n < PARALLEL_MIN:
        return 1
    rt = fastgd_rt()
    if rt.forked_serial:
        return 1
    t = rt.num_threads
    if t <= 0:
        t = openmp.omp_get_max_threads()
    if t > 1 and not rt.pool_started:
        rt.pool_started = 1
    return t


cdef inline Py_ssize_t piece_start(Py_ssize_t n, int nthreads, int t) noexcept nogil:
    """Where the contiguous piece of thread t among nthreads starts; it ends where t + 1's starts.

    Returned, not written through pointers: in a prange body, `lo = piece_start(n, nthreads, t)`
    makes lo private to each thread. `piece(n, nthreads, t, &lo, &hi)` left lo and hi shared by
    the team (Cython privatises only assigned variables): gcc stored lo, stored hi and re-read lo
    from the shared slot, so another thread's store in between made a thread skip its piece or
    do two (test_threads.py::test_concurrent_optimizers_match_serial failed now and then).
    """
    cdef Py_ssize_t per = (n + nthreads - 1) // nthreads
    per = (per + PIECE_ALIGN - 1) // PIECE_ALIGN * PIECE_ALIGN
    return min(n, t * per)
