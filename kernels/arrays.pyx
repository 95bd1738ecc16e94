"""The memory an array occupies, for the Python layer's overlap checks.

A step must refuse a gradient that shares memory with its parameter or state before anything is
written. np.may_share_memory costs ~0.6 us a pair and ``a.__array_interface__`` ~3 us an array,
more than the whole kernel call on a 1,000-element parameter; reading the pointer here costs
~0.05 us. (fastgd._validate uses the pure-Python form where this extension is not usable.)
"""
cimport numpy as cnp

cnp.import_array()


def span(cnp.ndarray a):
    """(lo, hi): the bytes [lo, hi) of a C-contiguous array's data; (0, 0) if it is empty."""
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(a)
    if nbytes == 0:
        return (0, 0)
    cdef size_t lo = <size_t>cnp.PyArray_DATA(a)
    return (lo, lo + <size_t>nbytes)
