"""Adamax: Adam with an infinity-norm second moment, one fused pass (torch.optim's formulas).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p;  m += (1 - b1) * (g - m);  u = max(b2 * u, |g| + eps);  p -= (lr / bc1) * m / u
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport fabs, fabsf
cimport numpy as cnp

from libc.stdint cimport uint32_t

from _arrays cimport data_of, float_typenum
from _formats cimport FGD_LANES, fgd_ld, fgd_st
from _layout cimport apply_recipe, compute_kind, lane_roles, local_row, recipe_of, run_many
from _math cimport _grad
from _parallel cimport piece_start, threads_for

cnp.import_array()

# _adamax_piece not inlined: adamax and adamax_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _adamax_lanes always inlined, so each call of
# _adamax_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_6adamax__adamax_piece(float *, float const *, float *, float *, float *, Py_ssize_t, float, int, float, int, float, float, float, float) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_6adamax__adamax_piece(double *, double const *, double *, double *, double *, Py_ssize_t, double, int, double, int, double, double, double, double) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_6adamax_AdamaxK;
    static inline void __pyx_f_6fastgd_7_cython_6adamax__adamax_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_6adamax_AdamaxK const *, int, int) __attribute__((always_inline));
    """


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline void _adamax_body(floating* p, const floating* g, floating* acc, floating* m,
                              floating* u, Py_ssize_t n, floating gs, bint use_acc, floating wd,
                              bint decay, floating omb1, floating b2, floating eps,
                              floating step_size) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, mi, ui, ai
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        mi = m[i] + omb1 * (gi - m[i])
        m[i] = mi
        ui = b2 * u[i]
        ai = _abs(gi) + eps
        # max(ui, ai) keeping a NaN from either side (a NaN gradient, or a NaN already in exp_inf),
        # as torch.maximum does; bitwise |, a branch-free select that gcc vectorises
        if (ai > ui) | (ai != ai):
            ui = ai
        u[i] = ui
        p[i] = pi - step_size * (mi / ui)


cdef void _adamax_piece(floating* p, const floating* g, floating* acc, floating* m, floating* u,
                        Py_ssize_t n, floating gs, bint use_acc, floating wd, bint decay,
                        floating omb1, floating b2, floating eps, floating step_size) noexcept nogil:
    _adamax_body(p, g, acc, m, u, n, gs, use_acc, wd, decay, omb1, b2, eps, step_size)


ctypedef struct AdamaxK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, wd, omb1, b2, eps, step_size
    bint use_acc, decay


cdef AdamaxK _adamax_k(double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                       double beta2, double eps, double weight_decay,
                       double bias_correction1) noexcept nogil:
    cdef AdamaxK k
    k.gs = -grad_scale if maximize else grad_scale
    k.wd = weight_decay
    k.omb1 = 1.0 - beta1
    k.b2 = beta2
    k.eps = eps
    k.step_size = lr / bias_correction1
    k.use_acc = use_acc
    k.decay = weight_decay != 0.0
    return k


cdef inline void _adamax_run(floating* p, const floating* g, floating* acc, floating* m,
                             floating* u, Py_ssize_t n, const AdamaxK* k) noexcept nogil:
    _adamax_piece(p, g, acc, m, u, n, <floating>k.gs, k.use_acc, <floating>k.wd, k.decay,
                  <floating>k.omb1, <floating>k.b2, <floating>k.eps, <floating>k.step_size)


cdef void _adamax(floating* p, const floating* g, floating* acc, floating* m, floating* u,
                  Py_ssize_t n, const AdamaxK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _adamax_run(p, g, acc, m, u, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adamax_run(p + lo, g + lo, acc + lo, m + lo, u + lo, hi - lo, k)


cdef inline void _adamax_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                               uint32_t key, const AdamaxK* kp, bint use_acc, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc is a constant here (see _adamax_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[6]
    cdef int f[6]
    local_row(row, codes, a, f, 6)
    apply_recipe(f, 6, recipe)   # known formats as constants (see _adamax_segment)
    cdef AdamaxK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float M[16]
    cdef float U[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, wd = <float>k.wd, omb1 = <float>k.omb1, b2 = <float>k.b2
    cdef float eps = <float>k.eps, step = <float>k.step_size
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, M, c)
        fgd_ld(f[4], a[4], b, U, c)
        _adamax_body(P, G, A, M, U, FGD_LANES, gs, use_acc, wd, k.decay, omb1, b2, eps, step)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[5] >= 0:
            fgd_st(f[5], P, a[5], b, c, key, 5)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], M, a[3], b, c, key, 3)
        fgd_st(f[4], U, a[4], b, c, key, 4)
        b = b + FGD_LANES


cdef void _adamax_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                          const void* kv) noexcept nogil:
    # One tensor's piece of adamax_many. Roles: p, g, acc, m, u, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 6)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const AdamaxK* k = <const AdamaxK*>kv
    cdef int kind = compute_kind(f, 6)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _adamax_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                    <float*>a[4] + lo, hi - lo, k)
    elif kind == 3:
        _adamax_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo,
                    <double*>a[3] + lo, <double*>a[4] + lo, hi - lo, k)
    # use_acc, which chooses the roles touched, as a constant: one lane loop each (adam.pyx)
    elif k.use_acc:
        _adamax_lanes(a, f, lo, hi, key, k, True, -9)
    else:
        if recipe == 0:
            _adamax_lanes(a, f, lo, hi, key, k, False, 0)
        elif recipe == 1:
            _adamax_lanes(a, f, lo, hi, key, k, False, 1)
        elif recipe == 2:
            _adamax_lanes(a, f, lo, hi, key, k, False, 2)
        elif recipe == 3:
            _adamax_lanes(a, f, lo, hi, key, k, False, 3)
        elif recipe == 4:
            _adamax_lanes(a, f, lo, hi, key, k, False, 4)
        elif recipe == 5:
            _adamax_lanes(a, f, lo, hi, key, k, False, 5)
        elif recipe == 6:
            _adamax_lanes(a, f, lo, hi, key, k, False, 6)
        elif recipe == 7:
            _adamax_lanes(a, f, lo, hi, key, k, False, 7)
        elif recipe == 8:
            _adamax_lanes(a, f, lo, hi, key, k, False, 8)
        elif recipe == 9:
            _adamax_lanes(a, f, lo, hi, key, k, False, 9)
        elif recipe == 10:
            _adamax_lanes(a, f, lo, hi, key, k, False, 10)
        else:
            _adamax_lanes(a, f, lo, hi, key, k, False, -9)


def adamax_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
                double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                double beta2, double eps, double weight_decay, double bias_correction1):
    """Adamax over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef AdamaxK k = _adamax_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                               bias_correction1)
    run_many(_adamax_segment, ptrs, offsets, fmts, keys, 6, &k, lane_roles(6, k.use_acc))


def adamax(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray exp_avg,
           cnp.ndarray exp_inf, double grad_scale, bint maximize, bint use_acc, double lr,
           double beta1, double beta2, double eps, double weight_decay, double bias_correction1):
    """Adamax step in place (module docstring). grad_acc is used only if use_acc (else pass param)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* m = data_of(exp_avg, n, typenum)
    cdef void* u = data_of(exp_inf, n, typenum)
    if n == 0:
        return
    cdef AdamaxK k = _adamax_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                               bias_correction1)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adamax(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>u, n, &k)
        else:
            _adamax(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>u, n, &k)
