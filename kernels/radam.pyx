"""RAdam: Adam with a rectified adaptive step, one fused pass (torch.optim's formulas).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p | p *= 1 - lr * wd (decoupled);  m, v as NAdam (kernels/nadam.pyx)
    adaptive (rho_t > 5): p -= (lr * rect * sqrt(bc2) / bc1) * m / (sqrt(v) + eps)
    else:                 p -= (lr / bc1) * m
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
cimport numpy as cnp

from libc.stdint cimport uint32_t

from _arrays cimport data_of, float_typenum
from _formats cimport FGD_LANES, fgd_ld, fgd_st
from _layout cimport apply_recipe, compute_kind, lane_roles, local_row, recipe_of, run_many
from _math cimport _adam_moments, _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()

# _radam_piece not inlined: radam and radam_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _radam_lanes always inlined, so each call of
# _radam_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_5radam__radam_piece(float *, float const *, float *, float *, float *, Py_ssize_t, float, int, float, int, float, float, float, float, float, float, int) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_5radam__radam_piece(double *, double const *, double *, double *, double *, Py_ssize_t, double, int, double, int, double, double, double, double, double, double, int) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_5radam_RadamK;
    static inline void __pyx_f_6fastgd_7_cython_5radam__radam_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_5radam_RadamK const *, int, int) __attribute__((always_inline));
    """


cdef inline void _radam_body(floating* p, const floating* g, floating* acc, floating* m,
                             floating* v, Py_ssize_t n, floating gs, bint use_acc, floating wd,
                             bint coupled, floating decay, floating omb1, floating b2,
                             floating omb2, floating eps, floating step_size,
                             bint adaptive) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, mi, vi
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if coupled:
            gi = gi + wd * pi
        pi = pi * decay
        mi = _adam_moments(m, v, i, gi, omb1, b2, omb2, &vi)
        if adaptive:
            p[i] = pi - step_size * mi / (_sqrt(vi) + eps)
        else:
            p[i] = pi - step_size * mi


cdef void _radam_piece(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                       Py_ssize_t n, floating gs, bint use_acc, floating wd, bint coupled,
                       floating decay, floating omb1, floating b2, floating omb2, floating eps,
                       floating step_size, bint adaptive) noexcept nogil:
    _radam_body(p, g, acc, m, v, n, gs, use_acc, wd, coupled, decay, omb1, b2, omb2, eps,
                step_size, adaptive)


ctypedef struct RadamK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, wd, decay, omb1, b2, omb2, eps, step_size
    bint use_acc, coupled, adaptive


cdef RadamK _radam_k(double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                     double beta2, double eps, double weight_decay, bint decoupled,
                     double bias_correction1, double bias_correction2, bint adaptive,
                     double rect) noexcept nogil:
    cdef RadamK k
    k.gs = -grad_scale if maximize else grad_scale
    k.coupled = weight_decay != 0.0 and not decoupled
    k.wd = weight_decay
    k.decay = (1.0 - lr * weight_decay) if decoupled else 1.0
    k.omb1 = 1.0 - beta1
    k.b2 = beta2
    k.omb2 = 1.0 - beta2
    k.eps = eps
    if adaptive:
        k.step_size = lr * rect * sqrt(bias_correction2) / bias_correction1
    else:
        k.step_size = lr / bias_correction1
    k.use_acc = use_acc
    k.adaptive = adaptive
    return k


cdef inline void _radam_run(floating* p, const floating* g, floating* acc, floating* m,
                            floating* v, Py_ssize_t n, const RadamK* k) noexcept nogil:
    _radam_piece(p, g, acc, m, v, n, <floating>k.gs, k.use_acc, <floating>k.wd, k.coupled,
                 <floating>k.decay, <floating>k.omb1, <floating>k.b2, <floating>k.omb2,
                 <floating>k.eps, <floating>k.step_size, k.adaptive)


cdef void _radam(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                 Py_ssize_t n, const RadamK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _radam_run(p, g, acc, m, v, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _radam_run(p + lo, g + lo, acc + lo, m + lo, v + lo, hi - lo, k)


cdef inline void _radam_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                              uint32_t key, const RadamK* kp, bint use_acc, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc is a constant here (see _radam_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[6]
    cdef int f[6]
    local_row(row, codes, a, f, 6)
    apply_recipe(f, 6, recipe)   # known formats as constants (see _radam_segment)
    cdef RadamK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float M[16]
    cdef float V[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, wd = <float>k.wd, decay = <float>k.decay, omb1 = <float>k.omb1
    cdef float b2 = <float>k.b2, omb2 = <float>k.omb2, eps = <float>k.eps
    cdef float step = <float>k.step_size
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, M, c)
        fgd_ld(f[4], a[4], b, V, c)
        _radam_body(P, G, A, M, V, FGD_LANES, gs, use_acc, wd, k.coupled, decay, omb1, b2, omb2,
                    eps, step, k.adaptive)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[5] >= 0:
            fgd_st(f[5], P, a[5], b, c, key, 5)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], M, a[3], b, c, key, 3)
        fgd_st(f[4], V, a[4], b, c, key, 4)
        b = b + FGD_LANES


cdef void _radam_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                         const void* kv) noexcept nogil:
    # One tensor's piece of radam_many. Roles: p, g, acc, m, v, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 6)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const RadamK* k = <const RadamK*>kv
    cdef int kind = compute_kind(f, 6)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _radam_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                   <float*>a[4] + lo, hi - lo, k)
    elif kind == 3:
        _radam_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo,
                   <double*>a[3] + lo, <double*>a[4] + lo, hi - lo, k)
    # use_acc, which chooses the roles touched, as a constant: one lane loop each (adam.pyx)
    elif k.use_acc:
        _radam_lanes(a, f, lo, hi, key, k, True, -9)
    else:
        if recipe == 0:
            _radam_lanes(a, f, lo, hi, key, k, False, 0)
        elif recipe == 1:
            _radam_lanes(a, f, lo, hi, key, k, False, 1)
        elif recipe == 2:
            _radam_lanes(a, f, lo, hi, key, k, False, 2)
        elif recipe == 3:
            _radam_lanes(a, f, lo, hi, key, k, False, 3)
        elif recipe == 4:
            _radam_lanes(a, f, lo, hi, key, k, False, 4)
        elif recipe == 5:
            _radam_lanes(a, f, lo, hi, key, k, False, 5)
        elif recipe == 6:
            _radam_lanes(a, f, lo, hi, key, k, False, 6)
        elif recipe == 7:
            _radam_lanes(a, f, lo, hi, key, k, False, 7)
        elif recipe == 8:
            _radam_lanes(a, f, lo, hi, key, k, False, 8)
        elif recipe == 9:
            _radam_lanes(a, f, lo, hi, key, k, False, 9)
        elif recipe == 10:
            _radam_lanes(a, f, lo, hi, key, k, False, 10)
        else:
            _radam_lanes(a, f, lo, hi, key, k, False, -9)


def radam_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
               double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
               double beta2, double eps, double weight_decay, bint decoupled,
               double bias_correction1, double bias_correction2, bint adaptive, double rect):
    """RAdam over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef RadamK k = _radam_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                             decoupled, bias_correction1, bias_correction2, adaptive, rect)
    run_many(_radam_segment, ptrs, offsets, fmts, keys, 6, &k, lane_roles(6, k.use_acc))


def radam(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray exp_avg,
          cnp.ndarray exp_avg_sq, double grad_scale, bint maximize, bint use_acc, double lr,
          double beta1, double beta2, double eps, double weight_decay, bint decoupled,
          double bias_correction1, double bias_correction2, bint adaptive, double rect):
    """RAdam step in place (module docstring); adaptive = rho_t > 5, rect the rectification term.
    grad_acc is used only if use_acc (else pass param)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* m = data_of(exp_avg, n, typenum)
    cdef void* v = data_of(exp_avg_sq, n, typenum)
    if n == 0:
        return
    cdef RadamK k = _radam_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                             decoupled, bias_correction1, bias_correction2, adaptive, rect)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _radam(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>v, n, &k)
        else:
            _radam(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>v, n, &k)
