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


# the typenum of ml_dtypes.bfloat16 (a user dtype: its number is given at import), or -1
cdef int BF16_TYPENUM = -1
try:
    import ml_dtypes as _ml_dtypes
    import numpy as _np
    BF16_TYPENUM = _np.dtype(_ml_dtypes.bfloat16).num
except ImportError:
    pass


cdef inline bint _storage_typenum(int t) noexcept:
    return (t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64 or t == cnp.NPY_FLOAT16
            or (t == BF16_TYPENUM and t >= 0))


def valid(tuple arrays, Py_ssize_t readonly=-1, bint mixed=False):
    """True when every array of ``arrays`` is what a kernel call needs, all at once: an exact
    numpy.ndarray, C-contiguous, aligned, native float32 or float64 of the first one's dtype and
    shape, writable (but for ``arrays[readonly]``), and no two of them sharing memory.

    The Python checks (fastgd._validate) say the same, one array at a time, and name what is
    wrong; callers run them only when this says False (~0.1 us here against ~1 us an array).
    ``mixed``: the optimizers' form, (grad, param, *state arrays): grad and param of one storage
    dtype (fastgd/formats.py: also bfloat16 and float16), the state arrays of any (their formats
    were checked when they were made).
    """
    cdef Py_ssize_t k = len(arrays), i, j, d, ndim
    cdef cnp.ndarray a, first
    cdef int typenum
    cdef size_t lo[16]
    cdef size_t hi[16]
    cdef size_t nbytes
    if k == 0 or k > 16:
        return False
    for i in range(k):
        if type(arrays[i]) is not cnp.ndarray:
            return False
    first = <cnp.ndarray>arrays[0]
    typenum = cnp.PyArray_TYPE(first)
    if not (_storage_typenum(typenum) if mixed else
            (typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)):
        return False
    ndim = cnp.PyArray_NDIM(first)
    for i in range(k):
        a = <cnp.ndarray>arrays[i]
        if mixed and i >= 2:
            if not _storage_typenum(cnp.PyArray_TYPE(a)):
                return False
        elif cnp.PyArray_TYPE(a) != typenum:
            return False
        if (not cnp.PyArray_ISNOTSWAPPED(a)
                or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a)
                or cnp.PyArray_NDIM(a) != ndim):
            return False
        if i != readonly and not cnp.PyArray_ISWRITEABLE(a):
            return False
        for d in range(ndim):
            if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(first, d):
                return False
        nbytes = <size_t>cnp.PyArray_NBYTES(a)
        lo[i] = <size_t>cnp.PyArray_DATA(a)
        hi[i] = lo[i] + nbytes
        if nbytes == 0:
            hi[i] = lo[i]
    for i in range(k):
        if lo[i] == hi[i]:
            continue
        for j in range(i + 1, k):
            if lo[j] != hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                return False
    return True


def disjoint(list addresses, const long long[::1] nbytes, const long long[::1] lo,
             const long long[::1] hi):
    """``addresses`` as an int64 array if no span [addresses[i], addresses[i] + nbytes[i]) of
    them overlaps any of the spans [lo[k], hi[k]) (sorted by lo, disjoint); else None. An
    empty span overlaps nothing. The optimizers' check that none of a step's gradients shares
    memory with a parameter or state array of its call table: 3.7 us for 150 gradients and
    600 spans, against 19 us in NumPy's passes (fastgd._validate's form without this
    extension; measured on the Xeon of 2026-12-03)."""
    cdef Py_ssize_t n = len(addresses), k = lo.shape[0], i, a, b, m
    if nbytes.shape[0] != n or hi.shape[0] != k:
        raise ValueError(f"disjoint: {n} addresses, {nbytes.shape[0]} sizes, {k} span starts and "
                         f"{hi.shape[0]} span ends; expected one size per address, one end per start")
    out = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
    cdef long long[::1] o = out
    cdef long long start, end
    for i in range(n):
        start = addresses[i]
        o[i] = start
        end = start + nbytes[i]
        if nbytes[i] == 0:
            continue
        a, b = 0, k          # the first span starting at or after end: lo[a] >= end
        while a < b:
            m = (a + b) // 2
            if lo[m] < end:
                a = m + 1
            else:
                b = m
        if a > 0 and hi[a - 1] > start:       # the last span starting before end reaches start
            return None
    return out
