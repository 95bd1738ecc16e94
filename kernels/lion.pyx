"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): one fused pass.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    c = b1 * m + (1 - b1) * g
    p = p * (1 - lr * wd) - lr * sign(c)
    m = b2 * m + (1 - b2) * g
"""
from cython cimport floating
from cython.parallel cimport prange
cimport numpy as cnp

from libc.stdint cimport uint32_t

from _arrays cimport data_of, float_typenum
from _formats cimport FGD_LANES, fgd_ld, fgd_st
from _layout cimport apply_recipe, compute_kind, lane_roles, local_row, recipe_of, run_many
from _math cimport _grad
from _parallel cimport piece_start, threads_for

cnp.import_array()

# _lion_piece not inlined: lion and lion_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _lion_lanes always inlined, so each call of
# _lion_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_4lion__lion_piece(float *, float const *, float *, float *, Py_ssize_t, float, int, float, float, float, float, float, float) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_4lion__lion_piece(double *, double const *, double *, double *, Py_ssize_t, double, int, double, double, double, double, double, double) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_4lion_LionK;
    static inline void __pyx_f_6fastgd_7_cython_4lion__lion_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_4lion_LionK const *, int, int) __attribute__((always_inline));
    """


cdef inline void _lion_body(floating* p, const floating* g, floating* acc, floating* m,
                            Py_ssize_t n, floating gs, bint use_acc, floating lr, floating decay,
                            floating b1, floating omb1, floating b2,
                            floating omb2) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, c, s
    for i in range(n):
        gi = _grad(g, acc, i, gs, use_acc)
        mi = m[i]
        c = b1 * mi + omb1 * gi
        # sign(c) as np.sign: 0 at 0, NaN stays NaN (a diverged run shows, instead of freezing).
        s = <floating>(c > 0) - <floating>(c < 0)
        if c != c:
            s = c
        p[i] = p[i] * decay - lr * s
        m[i] = b2 * mi + omb2 * gi


cdef void _lion_piece(floating* p, const floating* g, floating* acc, floating* m, Py_ssize_t n,
                      floating gs, bint use_acc, floating lr, floating decay, floating b1,
                      floating omb1, floating b2, floating omb2) noexcept nogil:
    _lion_body(p, g, acc, m, n, gs, use_acc, lr, decay, b1, omb1, b2, omb2)


ctypedef struct LionK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, lr, decay, b1, omb1, b2, omb2
    bint use_acc


cdef LionK _lion_k(double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                   double beta2, double weight_decay) noexcept nogil:
    cdef LionK k
    k.gs = -grad_scale if maximize else grad_scale
    k.lr = lr
    k.decay = 1.0 - lr * weight_decay
    k.b1 = beta1
    k.omb1 = 1.0 - beta1
    k.b2 = beta2
    k.omb2 = 1.0 - beta2
    k.use_acc = use_acc
    return k


cdef inline void _lion_run(floating* p, const floating* g, floating* acc, floating* m,
                           Py_ssize_t n, const LionK* k) noexcept nogil:
    _lion_piece(p, g, acc, m, n, <floating>k.gs, k.use_acc, <floating>k.lr, <floating>k.decay,
                <floating>k.b1, <floating>k.omb1, <floating>k.b2, <floating>k.omb2)


cdef void _lion(floating* p, const floating* g, floating* acc, floating* m, Py_ssize_t n,
                const LionK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _lion_run(p, g, acc, m, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _lion_run(p + lo, g + lo, acc + lo, m + lo, hi - lo, k)


cdef inline void _lion_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                             uint32_t key, const LionK* kp, bint use_acc, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc is a constant here (see _lion_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[5]
    cdef int f[5]
    local_row(row, codes, a, f, 5)
    apply_recipe(f, 5, recipe)   # known formats as constants (see _lion_segment)
    cdef LionK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float M[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, lr = <float>k.lr, decay = <float>k.decay, b1 = <float>k.b1
    cdef float omb1 = <float>k.omb1, b2 = <float>k.b2, omb2 = <float>k.omb2
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, M, c)
        _lion_body(P, G, A, M, FGD_LANES, gs, use_acc, lr, decay, b1, omb1, b2, omb2)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[4] >= 0:
            fgd_st(f[4], P, a[4], b, c, key, 4)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], M, a[3], b, c, key, 3)
        b = b + FGD_LANES


cdef void _lion_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                        const void* kv) noexcept nogil:
    # One tensor's piece of lion_many. Roles: p, g, acc, m, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 5)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const LionK* k = <const LionK*>kv
    cdef int kind = compute_kind(f, 5)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _lion_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                  hi - lo, k)
    elif kind == 3:
        _lion_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo, <double*>a[3] + lo,
                  hi - lo, k)
    # use_acc, which chooses the roles touched, as a constant: one lane loop each (adam.pyx)
    elif k.use_acc:
        _lion_lanes(a, f, lo, hi, key, k, True, -9)
    else:
        if recipe == 0:
            _lion_lanes(a, f, lo, hi, key, k, False, 0)
        elif recipe == 1:
            _lion_lanes(a, f, lo, hi, key, k, False, 1)
        elif recipe == 2:
            _lion_lanes(a, f, lo, hi, key, k, False, 2)
        elif recipe == 3:
            _lion_lanes(a, f, lo, hi, key, k, False, 3)
        elif recipe == 4:
            _lion_lanes(a, f, lo, hi, key, k, False, 4)
        elif recipe == 5:
            _lion_lanes(a, f, lo, hi, key, k, False, 5)
        elif recipe == 6:
            _lion_lanes(a, f, lo, hi, key, k, False, 6)
        elif recipe == 7:
            _lion_lanes(a, f, lo, hi, key, k, False, 7)
        elif recipe == 8:
            _lion_lanes(a, f, lo, hi, key, k, False, 8)
        elif recipe == 9:
            _lion_lanes(a, f, lo, hi, key, k, False, 9)
        elif recipe == 10:
            _lion_lanes(a, f, lo, hi, key, k, False, 10)
        else:
            _lion_lanes(a, f, lo, hi, key, k, False, -9)


def lion_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
              double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
              double beta2, double weight_decay):
    """Lion over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef LionK k = _lion_k(grad_scale, maximize, use_acc, lr, beta1, beta2, weight_decay)
    run_many(_lion_segment, ptrs, offsets, fmts, keys, 5, &k, lane_roles(5, k.use_acc))


def lion(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray exp_avg,
         double grad_scale, bint maximize, bint use_acc, double lr, double beta1, double beta2,
         double weight_decay):
    """Lion step in place (module docstring). grad_acc is used only if use_acc (else pass param)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* m = data_of(exp_avg, n, typenum)
    if n == 0:
        return
    cdef LionK k = _lion_k(grad_scale, maximize, use_acc, lr, beta1, beta2, weight_decay)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _lion(<float*>p, <float*>g, <float*>acc, <float*>m, n, &k)
        else:
            _lion(<double*>p, <double*>g, <double*>acc, <double*>m, n, &k)
