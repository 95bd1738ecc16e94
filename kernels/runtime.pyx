"""OpenMP runtime of the Cython backend: thread count and what the build has."""
cimport openmp


def set_num_threads(int n):
    """Threads every parallel Cython kernel uses from now on (omp_set_num_threads)."""
    openmp.omp_set_num_threads(n)


def get_num_threads():
    """Threads a parallel Cython kernel uses (omp_get_max_threads)."""
    return openmp.omp_get_max_threads()


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
