"""Adam / AdamW / AMSGrad: one fused pass over param, grad and the moments.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p (Adam) | p *= 1 - lr * wd (AdamW)
    m += (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g;  vmax = max(vmax, v) if amsgrad
    p -= (lr / bc1) * m / (sqrt(v or vmax) / sqrt(bc2) + eps)
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

# _adam_piece not inlined: adam and adam_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _adam_lanes always inlined, so each call of
# _adam_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_4adam__adam_piece(float *, float const *, float *, float *, float *, float *, Py_ssize_t, float, int, float, float, float, float, float, float, float, float, int, int) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_4adam__adam_piece(double *, double const *, double *, double *, double *, double *, Py_ssize_t, double, int, double, double, double, double, double, double, double, double, int, int) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_4adam_AdamK;
    static inline void __pyx_f_6fastgd_7_cython_4adam__adam_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_4adam_AdamK const *, int, int, int) __attribute__((always_inline));
    """


cdef inline void _adam_body(floating* p, const floating* g, floating* acc, floating* m,
                            floating* v, floating* vmax, Py_ssize_t n, floating gs, bint use_acc,
                            floating wd, floating decay, floating omb1, floating b2,
                            floating omb2, floating step_size, floating rbc2, floating eps,
                            bint coupled, bint amsgrad) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, mi, vi, d, u
    # use_acc/amsgrad are constants (see _adam_piece), coupled is unswitched by gcc, so each
    # variant is a branch-free vector loop. rbc2 = 1/sqrt(bc2) is hoisted: one sqrt, one
    # division per element.
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if coupled:
            gi = gi + wd * pi
        pi = pi * decay
        mi = _adam_moments(m, v, i, gi, omb1, b2, omb2, &vi)
        if amsgrad:
            # max(vmax, v) keeping a NaN from either side, as np.maximum/torch.maximum do: v NaN
            # fails the compare and stays; a stored NaN vmax is caught by u != u. Bitwise |: two
            # compares and one branch-free select (a vector blend).
            u = vmax[i]
            if (u > vi) | (u != u):
                vi = u
            vmax[i] = vi
        d = _sqrt(vi) * rbc2 + eps
        p[i] = pi - step_size * mi / d


cdef void _adam_piece(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                      floating* vmax, Py_ssize_t n, floating gs, bint use_acc, floating wd,
                      floating decay, floating omb1, floating b2, floating omb2, floating step_size,
                      floating rbc2, floating eps, bint coupled, bint amsgrad) noexcept nogil:
    # amsgrad and use_acc are unswitched here by hand (the body inlined with them as constants):
    # with the NaN-keeping max the loop is too big for gcc to unswitch three flags, and a loop
    # with a flag still in it does not vectorise (-fopt-info-vec). gcc unswitches coupled.
    if amsgrad:
        if use_acc:
            _adam_body(p, g, acc, m, v, vmax, n, gs, True, wd, decay, omb1, b2, omb2, step_size,
                       rbc2, eps, coupled, True)
        else:
            _adam_body(p, g, acc, m, v, vmax, n, gs, False, wd, decay, omb1, b2, omb2, step_size,
                       rbc2, eps, coupled, True)
    else:
        if use_acc:
            _adam_body(p, g, acc, m, v, vmax, n, gs, True, wd, decay, omb1, b2, omb2, step_size,
                       rbc2, eps, coupled, False)
        else:
            _adam_body(p, g, acc, m, v, vmax, n, gs, False, wd, decay, omb1, b2, omb2, step_size,
                       rbc2, eps, coupled, False)


ctypedef struct AdamK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, wd, decay, omb1, b2, omb2, step_size, rbc2, eps
    bint use_acc, coupled, amsgrad


cdef AdamK _adam_k(double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                   double beta2, double eps, double weight_decay, bint decoupled, bint amsgrad,
                   double bias_correction1, double bias_correction2) noexcept nogil:
    cdef AdamK k
    k.gs = -grad_scale if maximize else grad_scale
    k.coupled = weight_decay != 0.0 and not decoupled
    k.wd = weight_decay
    k.decay = (1.0 - lr * weight_decay) if decoupled else 1.0
    k.omb1 = 1.0 - beta1
    k.b2 = beta2
    k.omb2 = 1.0 - beta2
    k.step_size = lr / bias_correction1
    k.rbc2 = 1.0 / sqrt(bias_correction2)
    k.eps = eps
    k.use_acc = use_acc
    k.amsgrad = amsgrad
    return k


cdef inline void _adam_run(floating* p, const floating* g, floating* acc, floating* m,
                           floating* v, floating* vmax, Py_ssize_t n, const AdamK* k) noexcept nogil:
    _adam_piece(p, g, acc, m, v, vmax, n, <floating>k.gs, k.use_acc, <floating>k.wd,
                <floating>k.decay, <floating>k.omb1, <floating>k.b2, <floating>k.omb2,
                <floating>k.step_size, <floating>k.rbc2, <floating>k.eps, k.coupled, k.amsgrad)


cdef void _adam(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                floating* vmax, Py_ssize_t n, const AdamK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _adam_run(p, g, acc, m, v, vmax, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adam_run(p + lo, g + lo, acc + lo, m + lo, v + lo, vmax + lo, hi - lo, k)


cdef inline void _adam_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                             uint32_t key, const AdamK* kp, bint use_acc,
                             bint amsgrad, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc/amsgrad are constants here (see _adam_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[7]
    cdef int f[7]
    local_row(row, codes, a, f, 7)
    apply_recipe(f, 7, recipe)   # known formats as constants (see _adam_segment)
    cdef AdamK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float M[16]
    cdef float V[16]
    cdef float X[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, wd = <float>k.wd, decay = <float>k.decay, omb1 = <float>k.omb1
    cdef float b2 = <float>k.b2, omb2 = <float>k.omb2, step = <float>k.step_size
    cdef float rbc2 = <float>k.rbc2, eps = <float>k.eps
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, M, c)
        fgd_ld(f[4], a[4], b, V, c)
        if amsgrad:
            fgd_ld(f[5], a[5], b, X, c)
        _adam_body(P, G, A, M, V, X, FGD_LANES, gs, use_acc, wd, decay, omb1, b2, omb2, step,
                   rbc2, eps, k.coupled, amsgrad)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[6] >= 0:
            fgd_st(f[6], P, a[6], b, c, key, 6)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], M, a[3], b, c, key, 3)
        fgd_st(f[4], V, a[4], b, c, key, 4)
        if amsgrad:
            fgd_st(f[5], X, a[5], b, c, key, 5)
        b = b + FGD_LANES


cdef void _adam_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                        const void* kv) noexcept nogil:
    # One tensor's piece of adam_many. Roles: p, g, acc, m, v, vmax, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 7)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const AdamK* k = <const AdamK*>kv
    cdef int kind = compute_kind(f, 7)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _adam_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                  <float*>a[4] + lo, <float*>a[5] + lo, hi - lo, k)
    elif kind == 3:
        _adam_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo, <double*>a[3] + lo,
                  <double*>a[4] + lo, <double*>a[5] + lo, hi - lo, k)
    # The flags that choose which roles are touched as constants, one lane loop each: with them
    # left in, gcc kept them inside the 16-lane loop and bf16 AdamW took 10.6 ms instead of 7.1
    # at 16M (measured).
    elif k.use_acc:
        if k.amsgrad:
            _adam_lanes(a, f, lo, hi, key, k, True, True, -9)
        else:
            _adam_lanes(a, f, lo, hi, key, k, True, False, -9)
    elif k.amsgrad:
        if recipe == 0:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 0)
        elif recipe == 1:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 1)
        elif recipe == 2:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 2)
        elif recipe == 3:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 3)
        elif recipe == 4:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 4)
        elif recipe == 5:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 5)
        elif recipe == 6:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 6)
        elif recipe == 7:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 7)
        elif recipe == 8:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 8)
        elif recipe == 9:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 9)
        elif recipe == 10:
            _adam_lanes(a, f, lo, hi, key, k, False, True, 10)
        else:
            _adam_lanes(a, f, lo, hi, key, k, False, True, -9)
    else:
        if recipe == 0:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 0)
        elif recipe == 1:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 1)
        elif recipe == 2:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 2)
        elif recipe == 3:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 3)
        elif recipe == 4:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 4)
        elif recipe == 5:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 5)
        elif recipe == 6:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 6)
        elif recipe == 7:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 7)
        elif recipe == 8:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 8)
        elif recipe == 9:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 9)
        elif recipe == 10:
            _adam_lanes(a, f, lo, hi, key, k, False, False, 10)
        else:
            _adam_lanes(a, f, lo, hi, key, k, False, False, -9)


def adam_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
              double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
              double beta2, double eps, double weight_decay, bint decoupled, bint amsgrad,
              double bias_correction1, double bias_correction2):
    """Adam over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef AdamK k = _adam_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                           decoupled, amsgrad, bias_correction1, bias_correction2)
    run_many(_adam_segment, ptrs, offsets, fmts, keys, 7, &k, lane_roles(7, k.use_acc, -1 if k.amsgrad else 5))


def adam(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray exp_avg,
         cnp.ndarray exp_avg_sq, cnp.ndarray max_exp_avg_sq, double grad_scale, bint maximize,
         bint use_acc, double lr, double beta1, double beta2, double eps, double weight_decay,
         bint decoupled, bint amsgrad, double bias_correction1, double bias_correction2):
    """Adam step in place (module docstring); arrays validated by fastgd.functional.

    grad_acc is read (and zeroed) only if use_acc, max_exp_avg_sq only if amsgrad; pass param and
    exp_avg_sq in their places otherwise (writable arrays of the right kind, never touched).
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* m = data_of(exp_avg, n, typenum)
    cdef void* v = data_of(exp_avg_sq, n, typenum)
    cdef void* vmax = data_of(max_exp_avg_sq, n, typenum)
    if n == 0:
        return
    cdef AdamK k = _adam_k(grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay,
                           decoupled, amsgrad, bias_correction1, bias_correction2)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adam(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>v, <float*>vmax, n, &k)
        else:
            _adam(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>v, <double*>vmax, n,
                  &k)
