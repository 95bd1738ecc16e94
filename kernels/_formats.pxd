# The storage formats of the Cython kernels (kernels/_formats.h; fastgd/formats.py defines them).
from libc.stdint cimport uint32_t

cdef extern from "_formats.h" nogil:
    enum:
        FGD_F32
        FGD_BF16
        FGD_F16
        FGD_F64
        FGD_BF16_SR
        FGD_NONE
        FGD_LANES
    void fgd_ld(int fmt, const char* base, Py_ssize_t i, float* L, int k)
    int fgd_ld_prefetches(int fmt)
    void fgd_st(int fmt, const float* L, char* base, Py_ssize_t i, int k, uint32_t key,
                int role)
    const char* fgd_format_paths()
