# The many-tensor layout of the Cython kernels (kernels/CONTRACT.md, "<rule>_many"): a table of
# tensors stepped in one call, their elements divided among the threads as if they were one
# buffer. Written once here; each rule gives only its segment function (a piece [lo, hi) of one
# tensor, every role in its format).
#
# noinline: a rule's `_<rule>_piece` (its single loop, now a thin call of its inline body, the
# body the lane loop shares) is declared __attribute__((noinline)) by a verbatim prototype in its
# .pyx. Without it gcc's early inliner folds the thin piece into `_<rule>_run`, which is inlined
# into every caller, and each copy of the body is compiled on its own: their FMA contractions
# differed, so an all-float32 `<rule>_many` was not bitwise the single kernel (adam: 3 of 40001
# results, sgd: 356). One piece function: one machine code for both. And `_<rule>_lanes` is
# declared __attribute__((always_inline)) the same way: gcc kept adam's and rmsprop's as one
# function called by every branch of the segment, the flags of "one call per combination" back
# at run time inside the 16-lane loop. A prototype that no longer matches Cython's signature is
# a compile error ("conflicting types"), never silent.
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint32_t
cimport numpy as cnp

from _parallel cimport PIECE_ALIGN, piece_start, threads_for

ctypedef void (*segment_fn)(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                            const void* k) noexcept nogil


cdef inline Py_ssize_t table_of(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts,
                                cnp.ndarray keys, int roles) except -1:
    """The number of tensors of a checked table (a cheap last guard: fastgd._core built it)."""
    cdef Py_ssize_t n = cnp.PyArray_DIM(ptrs, 0) if cnp.PyArray_NDIM(ptrs) == 2 else -1
    if (n < 0 or cnp.PyArray_DIM(ptrs, 1) != roles or cnp.PyArray_TYPE(ptrs) != cnp.NPY_INT64
            or not cnp.PyArray_IS_C_CONTIGUOUS(ptrs)
            or cnp.PyArray_TYPE(offsets) != cnp.NPY_INT64 or cnp.PyArray_SIZE(offsets) != n + 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(offsets)
            or cnp.PyArray_TYPE(fmts) != cnp.NPY_INT32 or cnp.PyArray_SIZE(fmts) != roles
            or not cnp.PyArray_IS_C_CONTIGUOUS(fmts)
            or cnp.PyArray_TYPE(keys) != cnp.NPY_UINT32 or cnp.PyArray_SIZE(keys) != n
            or not cnp.PyArray_IS_C_CONTIGUOUS(keys)):
        raise ValueError(f"a many-tensor table is ptrs int64 (N, {roles}), offsets int64 (N + 1,), "
                         f"fmts int32 ({roles},), keys uint32 (N,), all C-contiguous")
    return n


cdef inline Py_ssize_t _cut(Py_ssize_t x, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """A piece boundary x of the concatenation as an index in the tensor [start, end): rounded up
    to a multiple of PIECE_ALIGN of the tensor itself. So every tensor is cut where its single
    kernel would cut it (multiples of 16 from its start), and a piece ends mid-tensor only on a
    full vector: the vectorised *_piece loops compute the elements of their scalar tail with
    other FMA contractions than their vector body, so a cut at, say, 31507 gave 3 of 40001 float32
    results that differed from the single kernel and from one thread (adam_many, measured). Both
    threads at a boundary round it alike; a piece is at most 15 elements longer."""
    if x <= start:
        return 0
    if x >= end:
        return end - start
    return min(end - start, (x - start + PIECE_ALIGN - 1) // PIECE_ALIGN * PIECE_ALIGN)


cdef inline void _walk(segment_fn fn, const int64_t* ptrs, const int64_t* offsets, Py_ssize_t n,
                       int roles, const int* f, const uint32_t* keys, const void* k,
                       Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The elements [lo, hi) of the concatenation: each tensor's part as one segment."""
    cdef Py_ssize_t a = 0, b = n, mid, j, s, e
    while b - a > 1:                # the last tensor starting at or before lo
        mid = (a + b) // 2
        if offsets[mid] <= lo:
            a = mid
        else:
            b = mid
    j = a
    while j < n and offsets[j] < hi:
        if offsets[j + 1] > lo:
            s = _cut(lo, offsets[j], offsets[j + 1])
            e = _cut(hi, offsets[j], offsets[j + 1])
            if e > s:
                fn(<char**>(ptrs + j * roles), f, s, e, keys[j], k)
        j = j + 1


cdef inline void run_many(segment_fn fn, cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts,
                          cnp.ndarray keys, int roles, const void* k) except *:
    """Step every tensor of the table with the rule's segment function ``fn`` and scalars ``k``."""
    cdef Py_ssize_t n = table_of(ptrs, offsets, fmts, keys, roles)
    cdef const int64_t* p = <const int64_t*>cnp.PyArray_DATA(ptrs)
    cdef const int64_t* o = <const int64_t*>cnp.PyArray_DATA(offsets)
    cdef const int* f = <const int*>cnp.PyArray_DATA(fmts)
    cdef const uint32_t* kk = <const uint32_t*>cnp.PyArray_DATA(keys)
    cdef Py_ssize_t total, lo, hi, j
    cdef int t, nthreads
    if n == 0:
        return
    total = o[n]
    nthreads = threads_for(total)
    with nogil:
        if nthreads == 1:
            for j in range(n):
                if o[j + 1] > o[j]:
                    fn(<char**>(p + j * roles), f, 0, o[j + 1] - o[j], kk[j], k)
        else:
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                lo = piece_start(total, nthreads, t)
                hi = piece_start(total, nthreads, t + 1)
                if hi > lo:
                    _walk(fn, p, o, n, roles, f, kk, k, lo, hi)


cdef inline int compute_kind(const int* f, int roles) noexcept nogil:
    """FGD_F64 if every role but ``out`` (the last) is float64, FGD_F32 if every one is float32
    with no ``out``: the single kernels' loops run on the memory itself; else -1 (lanes)."""
    cdef int r, all32 = f[roles - 1] == -1, all64 = 1
    for r in range(roles - 1):
        all32 = all32 and f[r] == 0
        all64 = all64 and f[r] == 3
    return 3 if all64 else (0 if all32 else -1)


cdef inline void local_row(char** row, const int* codes, char** a, int* f, int roles) noexcept nogil:
    """Copy a tensor's row of addresses and the format codes into a lane loop's locals."""
    cdef int r
    for r in range(roles):
        a[r] = row[r]
        f[r] = codes[r]


# The formats most calls have (param, grad and grad_acc, states, out), numbered: a lane loop
# called with one of these numbers as a constant knows its roles' formats at compile time (gcc
# folds fgd_ld/fgd_st's switch away and keeps the lanes in registers): measured at 16M, bf16
# AdamW 1.5x and fp16 1.8x faster than with the codes read at run time. Other combinations
# (and grad_acc's fused accumulation) run with the codes read at run time.
cdef extern from *:
    """
    static const int fgd_recipes[11][4] = {
        {1, 1, 1, -1}, {2, 2, 2, -1},              /* all bfloat16, all float16 */
        {1, 1, 0, -1}, {2, 2, 0, -1},              /* 16-bit params, float32 states */
        {0, 0, 1, -1}, {0, 0, 2, -1},              /* float32 params, 16-bit states */
        {0, 1, 0, 1}, {0, 2, 0, 2},                /* master weights, float32 states */
        {0, 1, 1, 1},                              /* master weights, bfloat16 states */
        {4, 1, 4, -1}, {4, 1, 0, -1},              /* bf16_stochastic_round */
    };
    /* Set the codes f to recipe `recipe`'s: the same values, but constants when `recipe` is
     * one (always inlined: with a lane loop inlined 11 times per flag combination gcc's
     * inlining budget ran out and the codes stayed loads); -9 leaves them as read. */
    static inline __attribute__((always_inline)) void fgd_apply_recipe(int *f, int roles, int recipe) {
        int r;
        if (recipe < 0 || recipe >= 11) return;
        f[0] = fgd_recipes[recipe][0];
        f[1] = f[2] = fgd_recipes[recipe][1];
        for (r = 3; r < roles - 1; r++) f[r] = fgd_recipes[recipe][2];
        f[roles - 1] = fgd_recipes[recipe][3];
    }
    """
    const int fgd_recipes[11][4]
    void apply_recipe "fgd_apply_recipe" (int* f, int roles, int recipe) nogil


cdef inline int recipe_of(const int* f, int roles) noexcept nogil:
    """The index of the recipe the codes ``f`` are (fgd_recipes), or -1."""
    cdef int i, r, ok
    for i in range(11):
        ok = (f[0] == fgd_recipes[i][0] and f[1] == fgd_recipes[i][1] and f[2] == f[1]
              and f[roles - 1] == fgd_recipes[i][3])
        for r in range(3, roles - 1):
            ok = ok and f[r] == fgd_recipes[i][2]
        if ok:
            return i
    return -1


