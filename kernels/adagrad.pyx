"""Adagrad: step sizes from a running sum of g^2, one fused pass.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    s += g * g;  p -= clr * g / (sqrt(s) + eps)     (clr = lr / (1 + (t - 1) * lr_decay))
"""
from cython cimport floating
from cython.parallel cimport prange
cimport numpy as cnp

from libc.stdint cimport uint32_t

from _arrays cimport data_of, float_typenum
from _formats cimport FGD_LANES, fgd_ld, fgd_st
from _layout cimport apply_recipe, compute_kind, lane_roles, local_row, recipe_of, run_many
from _math cimport _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()

# _adagrad_piece not inlined: adagrad and adagrad_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _adagrad_lanes always inlined, so each call of
# _adagrad_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_7adagrad__adagrad_piece(float *, float const *, float *, float *, Py_ssize_t, float, int, float, float, int, float) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_7adagrad__adagrad_piece(double *, double const *, double *, double *, Py_ssize_t, double, int, double, double, int, double) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_7adagrad_AdagradK;
    static inline void __pyx_f_6fastgd_7_cython_7adagrad__adagrad_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_7adagrad_AdagradK const *, int, int) __attribute__((always_inline));
    """


cdef inline void _adagrad_body(floating* p, const floating* g, floating* acc, floating* s,
                               Py_ssize_t n, floating gs, bint use_acc, floating clr, floating wd,
                               bint decay, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, si
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        si = s[i] + gi * gi
        s[i] = si
        p[i] = pi - clr * (gi / (_sqrt(si) + eps))


cdef void _adagrad_piece(floating* p, const floating* g, floating* acc, floating* s, Py_ssize_t n,
                         floating gs, bint use_acc, floating clr, floating wd, bint decay,
                         floating eps) noexcept nogil:
    _adagrad_body(p, g, acc, s, n, gs, use_acc, clr, wd, decay, eps)


ctypedef struct AdagradK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, clr, wd, eps
    bint use_acc, decay


cdef AdagradK _adagrad_k(double grad_scale, bint maximize, bint use_acc, double clr,
                         double weight_decay, double eps) noexcept nogil:
    cdef AdagradK k
    k.gs = -grad_scale if maximize else grad_scale
    k.clr = clr
    k.wd = weight_decay
    k.eps = eps
    k.use_acc = use_acc
    k.decay = weight_decay != 0.0
    return k


cdef inline void _adagrad_run(floating* p, const floating* g, floating* acc, floating* s,
                              Py_ssize_t n, const AdagradK* k) noexcept nogil:
    _adagrad_piece(p, g, acc, s, n, <floating>k.gs, k.use_acc, <floating>k.clr, <floating>k.wd,
                   k.decay, <floating>k.eps)


cdef void _adagrad(floating* p, const floating* g, floating* acc, floating* s, Py_ssize_t n,
                   const AdagradK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _adagrad_run(p, g, acc, s, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adagrad_run(p + lo, g + lo, acc + lo, s + lo, hi - lo, k)


cdef inline void _adagrad_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                                uint32_t key, const AdagradK* kp, bint use_acc, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc is a constant here (see _adagrad_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[5]
    cdef int f[5]
    local_row(row, codes, a, f, 5)
    apply_recipe(f, 5, recipe)   # known formats as constants (see _adagrad_segment)
    cdef AdagradK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float S[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, clr = <float>k.clr, wd = <float>k.wd, eps = <float>k.eps
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, S, c)
        _adagrad_body(P, G, A, S, FGD_LANES, gs, use_acc, clr, wd, k.decay, eps)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[4] >= 0:
            fgd_st(f[4], P, a[4], b, c, key, 4)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], S, a[3], b, c, key, 3)
        b = b + FGD_LANES


cdef void _adagrad_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                           const void* kv) noexcept nogil:
    # One tensor's piece of adagrad_many. Roles: p, g, acc, sum, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 5)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const AdagradK* k = <const AdagradK*>kv
    cdef int kind = compute_kind(f, 5)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _adagrad_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                     hi - lo, k)
    elif kind == 3:
        _adagrad_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo,
                     <double*>a[3] + lo, hi - lo, k)
    # use_acc, which chooses the roles touched, as a constant: one lane loop each (adam.pyx)
    elif k.use_acc:
        _adagrad_lanes(a, f, lo, hi, key, k, True, -9)
    else:
        if recipe == 0:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 0)
        elif recipe == 1:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 1)
        elif recipe == 2:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 2)
        elif recipe == 3:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 3)
        elif recipe == 4:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 4)
        elif recipe == 5:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 5)
        elif recipe == 6:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 6)
        elif recipe == 7:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 7)
        elif recipe == 8:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 8)
        elif recipe == 9:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 9)
        elif recipe == 10:
            _adagrad_lanes(a, f, lo, hi, key, k, False, 10)
        else:
            _adagrad_lanes(a, f, lo, hi, key, k, False, -9)


def adagrad_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
                 double grad_scale, bint maximize, bint use_acc, double clr, double weight_decay,
                 double eps):
    """Adagrad over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef AdagradK k = _adagrad_k(grad_scale, maximize, use_acc, clr, weight_decay, eps)
    run_many(_adagrad_segment, ptrs, offsets, fmts, keys, 5, &k, lane_roles(5, k.use_acc))


def adagrad(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray state_sum,
            double grad_scale, bint maximize, bint use_acc, double clr, double weight_decay,
            double eps):
    """Adagrad step in place (module docstring); clr is the decayed lr of this step.

    grad_acc is read and zeroed only if use_acc (pass param in its place otherwise).
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* s = data_of(state_sum, n, typenum)
    if n == 0:
        return
    cdef AdagradK k = _adagrad_k(grad_scale, maximize, use_acc, clr, weight_decay, eps)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adagrad(<float*>p, <float*>g, <float*>acc, <float*>s, n, &k)
        else:
            _adagrad(<double*>p, <double*>g, <double*>acc, <double*>s, n, &k)
