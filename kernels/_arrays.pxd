# How a Cython kernel's Python wrapper reaches the memory of its arrays.
#
# fastgd.functional has already validated every array (type, dtype, contiguity, shape, aliasing),
# so the wrapper needs only the data pointer. Typed memoryviews would re-check all of that and cost
# ~0.4 us per array per call, which dominates a 1,000-element step; PyArray_DATA costs nothing.
# The checks below are a cheap last guard against a direct call with mismatched arrays.
cimport numpy as cnp

# Every .pyx that cimports this must call cnp.import_array() at module level (a .pxd runs no code).


cdef inline bint is_float32(cnp.ndarray a) noexcept:
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


cdef inline void* data_of(cnp.ndarray a, Py_ssize_t n, int typenum, bint writable=True) except NULL:
    """The data pointer of a C-contiguous array of n elements of typenum, else raise."""
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_SIZE(a) != n
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError("kernel arrays must be writable, C-contiguous, of one float dtype and length")
    return cnp.PyArray_DATA(a)


cdef inline int float_typenum(cnp.ndarray a) except -1:
    cdef int t = cnp.PyArray_TYPE(a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError("kernel arrays must be float32 or float64")
    return t
