"""Gradient-wide operations: deterministic norm partials, scaling, clamping, accumulation.

    norm_partial(x, y, use_y, norm_type) = sum |v|^p  (max |v| for p = inf),  v = x (+ y if use_y)
    scale(x, s):            x *= s
    clamp(x, lo, hi):       x = min(max(x, lo), hi)   (NaN stays NaN, as torch.clamp)
    accumulate(acc, g, s):  acc += s * g

The norm is a reduction whose result must not depend on the thread count. [0, n) is cut into
blocks of BLOCK elements (independent of threads); a block is summed in LANES independent float64
lanes (lane j takes the elements i with i % LANES == j, in order), the lanes are combined by a
fixed pairwise tree, and the block sums are added in block order after the parallel part.
Threads only decide who computes which block. A thread computes its p = 1, 2 blocks
several at a time from interleaved runs (more cache misses in flight); that changes only when a
block is computed, not how. float32 data is widened to float64 before it is
squared (exactly, so a fused multiply-add gives the same bits as a multiply and an add), which is
what makes the Numba twin (fastgd/_numba/norms.py) bitwise equal for float32 and p in {1, 2, inf}.
The p = 1, 2, inf block loops are in _lanes.h (GCC vector extensions; see there why).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, fabs, pow
from libc.stdlib cimport free, malloc
cimport numpy as cnp

from _arrays cimport data_of, float_typenum
from _parallel cimport piece_start, threads_for

cnp.import_array()

cdef extern from "_lanes.h" nogil:
    double fgd_sumsq_f32(const float* x, const float* y, Py_ssize_t n, int use_y)
    double fgd_sumsq_f64(const double* x, const double* y, Py_ssize_t n, int use_y)
    double fgd_sumabs_f32(const float* x, const float* y, Py_ssize_t n, int use_y)
    double fgd_sumabs_f64(const double* x, const double* y, Py_ssize_t n, int use_y)
    double fgd_maxabs_f32(const float* x, const float* y, Py_ssize_t n, int use_y)
    double fgd_maxabs_f64(const double* x, const double* y, Py_ssize_t n, int use_y)
    void fgd_sumsq_range_f32(const float* x, const float* y, Py_ssize_t n, Py_ssize_t b0,
                             Py_ssize_t b1, int use_y, double* blocks)
    void fgd_sumsq_range_f64(const double* x, const double* y, Py_ssize_t n, Py_ssize_t b0,
                             Py_ssize_t b1, int use_y, double* blocks)
    void fgd_sumabs_range_f32(const float* x, const float* y, Py_ssize_t n, Py_ssize_t b0,
                              Py_ssize_t b1, int use_y, double* blocks)
    void fgd_sumabs_range_f64(const double* x, const double* y, Py_ssize_t n, Py_ssize_t b0,
                              Py_ssize_t b1, int use_y, double* blocks)

cdef enum:
    BLOCK = 4096      # elements per block: the unit of the fixed summation order
    LANES = 16        # independent partial sums per block: a vectorisable reduction without fast-math

cdef enum:
    KIND_SQ = 0       # p = 2
    KIND_ABS = 1      # p = 1
    KIND_POW = 2      # any other finite p > 0
    KIND_MAX = 3      # p = inf


cdef inline double _tree(double* lanes) noexcept nogil:
    """Fixed pairwise sum of the 16 lanes (the same tree as fgd_tree in _lanes.h)."""
    cdef int j
    cdef double s[8]
    for j in range(8):
        s[j] = lanes[j] + lanes[j + 8]
    for j in range(4):
        s[j] = s[j] + s[j + 4]
    return (s[0] + s[2]) + (s[1] + s[3])


cdef double _block_pow(const floating* x, const floating* y, Py_ssize_t n, bint use_y,
                       double p) noexcept nogil:
    """sum |x[i] (+ y[i])|^p over one block, in the LANES lanes of _lanes.h (scalar: pow does not
    vectorise without fast-math, and a p other than 1, 2, inf is rare)."""
    cdef double lanes[LANES]
    cdef Py_ssize_t i
    cdef int j
    cdef floating v
    for j in range(LANES):
        lanes[j] = 0
    for i in range(n):
        v = x[i] + y[i] if use_y else x[i]
        lanes[i % LANES] += pow(fabs(<double>v), p)
    return _tree(lanes)


cdef double _block(const floating* x, const floating* y, Py_ssize_t n, bint use_y, int kind,
                   double p) noexcept nogil:
    """One block's partial: the vector-extension loops of _lanes.h, or the scalar loop for |v|^p."""
    if floating is float:
        if kind == KIND_SQ:
            return fgd_sumsq_f32(x, y, n, use_y)
        if kind == KIND_ABS:
            return fgd_sumabs_f32(x, y, n, use_y)
        if kind == KIND_MAX:
            return fgd_maxabs_f32(x, y, n, use_y)
    else:
        if kind == KIND_SQ:
            return fgd_sumsq_f64(x, y, n, use_y)
        if kind == KIND_ABS:
            return fgd_sumabs_f64(x, y, n, use_y)
        if kind == KIND_MAX:
            return fgd_maxabs_f64(x, y, n, use_y)
    return _block_pow(x, y, n, use_y, p)


cdef void _range(const floating* x, const floating* y, Py_ssize_t n, Py_ssize_t b0, Py_ssize_t b1,
                 bint use_y, int kind, double* blocks) noexcept nogil:
    """Blocks [b0, b1) of p = 2 or p = 1 into blocks[], walked as several interleaved streams
    (_lanes.h, fgd_sum*_range: more misses in flight; each block's sum bitwise as _block's)."""
    if floating is float:
        if kind == KIND_SQ:
            fgd_sumsq_range_f32(x, y, n, b0, b1, use_y, blocks)
        else:
            fgd_sumabs_range_f32(x, y, n, b0, b1, use_y, blocks)
    else:
        if kind == KIND_SQ:
            fgd_sumsq_range_f64(x, y, n, b0, b1, use_y, blocks)
        else:
            fgd_sumabs_range_f64(x, y, n, b0, b1, use_y, blocks)


cdef double _norm_partial(const floating* x, const floating* y, Py_ssize_t n, bint use_y, int kind,
                          double p, double* blocks) noexcept nogil:
    """Blocks computed by any thread into blocks[], then combined in block order."""
    cdef Py_ssize_t nb = (n + BLOCK - 1) // BLOCK, b, lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef double total = 0, s
    if nthreads > nb:
        nthreads = <int>nb
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        # Thread t takes the blocks [t*nb/T, (t+1)*nb/T): contiguous memory, and the same block
        # boundaries whatever T is.
        if kind == KIND_SQ or kind == KIND_ABS:
            _range(x, y, n, t * nb // nthreads, (t + 1) * nb // nthreads, use_y, kind, blocks)
            continue
        for b in range(t * nb // nthreads, (t + 1) * nb // nthreads):
            lo = b * BLOCK
            hi = min(n, lo + BLOCK)
            blocks[b] = _block(x + lo, y + lo, hi - lo, use_y, kind, p)
    for b in range(nb):
        s = blocks[b]
        if kind == KIND_MAX:
            if s != s:
                return NAN
            total = s if s > total else total
        else:
            total += s
    return total


def norm_partial(cnp.ndarray x, cnp.ndarray y, bint use_y, double norm_type):
    """sum |v|^p over v = x (+ y if use_y), or max |v| for p = inf; float64, deterministic.

    y is read only if use_y (pass x otherwise). The caller combines the partials of several
    arrays (in order) and takes the 1/p power.
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x), nb
    cdef int typenum = float_typenum(x)
    cdef const void* px = data_of(x, n, typenum, False)
    cdef const void* py = data_of(y, n, typenum, False)
    cdef int kind
    cdef double one, total
    cdef double* blocks
    if norm_type == INFINITY:
        kind = KIND_MAX
    elif norm_type == 2.0:
        kind = KIND_SQ
    elif norm_type == 1.0:
        kind = KIND_ABS
    elif norm_type > 0 and norm_type < INFINITY:
        kind = KIND_POW
    else:
        raise ValueError(f"norm_type must be > 0 or inf; got {norm_type}")
    if n == 0:
        return 0.0
    if not use_y:
        py = px
    if n <= BLOCK:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                one = _block(<const float*>px, <const float*>py, n, use_y, kind, norm_type)
            else:
                one = _block(<const double*>px, <const double*>py, n, use_y, kind, norm_type)
        return one
    nb = (n + BLOCK - 1) // BLOCK
    blocks = <double*>malloc(nb * sizeof(double))
    if blocks == NULL:
        raise MemoryError()
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                total = _norm_partial(<const float*>px, <const float*>py, n, use_y, kind, norm_type, blocks)
            else:
                total = _norm_partial(<const double*>px, <const double*>py, n, use_y, kind, norm_type, blocks)
    finally:
        free(blocks)
    return total


# --- elementwise -------------------------------------------------------------------------------

cdef void _scale_piece(floating* x, Py_ssize_t n, floating s) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = x[i] * s


cdef void _clamp_piece(floating* x, Py_ssize_t n, floating lo, floating hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        v = lo if v < lo else v
        x[i] = hi if v > hi else v


cdef void _accumulate_piece(floating* acc, const floating* g, Py_ssize_t n, floating s) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        acc[i] = acc[i] + s * g[i]


cdef void _scale(floating* x, Py_ssize_t n, double s) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _scale_piece(x, n, <floating>s)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _scale_piece(x + lo, hi - lo, <floating>s)


cdef void _clamp(floating* x, Py_ssize_t n, double lo_, double hi_) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _clamp_piece(x, n, <floating>lo_, <floating>hi_)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _clamp_piece(x + lo, hi - lo, <floating>lo_, <floating>hi_)


cdef void _accumulate(floating* acc, const floating* g, Py_ssize_t n, double s) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _accumulate_piece(acc, g, n, <floating>s)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _accumulate_piece(acc + lo, g + lo, hi - lo, <floating>s)


def scale(cnp.ndarray x, double s):
    """x *= s in place (s cast to x's dtype once)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef int typenum = float_typenum(x)
    cdef void* px = data_of(x, n, typenum)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _scale(<float*>px, n, s)
        else:
            _scale(<double*>px, n, s)


def clamp(cnp.ndarray x, double lo, double hi):
    """x = min(max(x, lo), hi) in place; NaN stays NaN."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef int typenum = float_typenum(x)
    cdef void* px = data_of(x, n, typenum)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _clamp(<float*>px, n, lo, hi)
        else:
            _clamp(<double*>px, n, lo, hi)


def accumulate(cnp.ndarray acc, cnp.ndarray grad, double scale):
    """acc += scale * grad in place (scale cast to the dtype once)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(acc)
    cdef int typenum = float_typenum(acc)
    cdef void* pa = data_of(acc, n, typenum)
    cdef const void* pg = data_of(grad, n, typenum, False)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _accumulate(<float*>pa, <const float*>pg, n, scale)
        else:
            _accumulate(<double*>pa, <const double*>pg, n, scale)
