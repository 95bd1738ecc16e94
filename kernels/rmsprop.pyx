"""RMSprop: step sizes from a running average of g^2, one fused pass.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    sq = a * sq + (1 - a) * g * g
    centered: ga += (1 - a) * (g - ga);  d = sqrt(sq - ga * ga) + eps;  else d = sqrt(sq) + eps
    momentum: buf = mu * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
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

# _rmsprop_piece not inlined: rmsprop and rmsprop_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _rmsprop_lanes always inlined, so each call of
# _rmsprop_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_7rmsprop__rmsprop_piece(float *, float const *, float *, float *, float *, float *, Py_ssize_t, float, int, float, float, float, float, float, int, float, int, int) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_7rmsprop__rmsprop_piece(double *, double const *, double *, double *, double *, double *, Py_ssize_t, double, int, double, double, double, double, double, int, double, int, int) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_7rmsprop_RmspropK;
    static inline void __pyx_f_6fastgd_7_cython_7rmsprop__rmsprop_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_7rmsprop_RmspropK const *, int, int, int, int) __attribute__((always_inline));
    """


cdef inline void _rmsprop_body(floating* p, const floating* g, floating* acc, floating* sq,
                               floating* buf, floating* ga, Py_ssize_t n, floating gs,
                               bint use_acc, floating lr, floating alpha, floating oma,
                               floating eps, floating wd, bint decay, floating mu,
                               bint use_momentum, bint centered) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, si, ai, d, bi
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        si = alpha * sq[i] + oma * gi * gi
        sq[i] = si
        if centered:
            ai = ga[i] + oma * (gi - ga[i])
            ga[i] = ai
            si = si - ai * ai
        d = _sqrt(si) + eps
        if use_momentum:
            bi = mu * buf[i] + gi / d
            buf[i] = bi
            p[i] = pi - lr * bi
        else:
            p[i] = pi - lr * (gi / d)


cdef void _rmsprop_piece(floating* p, const floating* g, floating* acc, floating* sq, floating* buf,
                         floating* ga, Py_ssize_t n, floating gs, bint use_acc, floating lr,
                         floating alpha, floating oma, floating eps, floating wd, bint decay,
                         floating mu, bint use_momentum, bint centered) noexcept nogil:
    # Four loop-invariant flags are more than gcc unswitches ("loop too big", -fopt-info-loop):
    # centered and use_momentum are unswitched here by hand (the body is inlined with them as
    # constants); gcc unswitches use_acc and decay in each copy, so every variant vectorises.
    if centered:
        if use_momentum:
            _rmsprop_body(p, g, acc, sq, buf, ga, n, gs, use_acc, lr, alpha, oma, eps, wd, decay,
                          mu, True, True)
        else:
            _rmsprop_body(p, g, acc, sq, buf, ga, n, gs, use_acc, lr, alpha, oma, eps, wd, decay,
                          mu, False, True)
    else:
        if use_momentum:
            _rmsprop_body(p, g, acc, sq, buf, ga, n, gs, use_acc, lr, alpha, oma, eps, wd, decay,
                          mu, True, False)
        else:
            _rmsprop_body(p, g, acc, sq, buf, ga, n, gs, use_acc, lr, alpha, oma, eps, wd, decay,
                          mu, False, False)


ctypedef struct RmspropK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, lr, alpha, oma, eps, wd, mu
    bint use_acc, decay, use_momentum, centered


cdef RmspropK _rmsprop_k(double grad_scale, bint maximize, bint use_acc, double lr, double alpha,
                         double eps, double weight_decay, double momentum,
                         bint centered) noexcept nogil:
    cdef RmspropK k
    k.gs = -grad_scale if maximize else grad_scale
    k.lr = lr
    k.alpha = alpha
    k.oma = 1.0 - alpha
    k.eps = eps
    k.wd = weight_decay
    k.mu = momentum
    k.use_acc = use_acc
    k.decay = weight_decay != 0.0
    k.use_momentum = momentum > 0.0
    k.centered = centered
    return k


cdef inline void _rmsprop_run(floating* p, const floating* g, floating* acc, floating* sq,
                              floating* buf, floating* ga, Py_ssize_t n,
                              const RmspropK* k) noexcept nogil:
    _rmsprop_piece(p, g, acc, sq, buf, ga, n, <floating>k.gs, k.use_acc, <floating>k.lr,
                   <floating>k.alpha, <floating>k.oma, <floating>k.eps, <floating>k.wd, k.decay,
                   <floating>k.mu, k.use_momentum, k.centered)


cdef void _rmsprop(floating* p, const floating* g, floating* acc, floating* sq, floating* buf,
                   floating* ga, Py_ssize_t n, const RmspropK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _rmsprop_run(p, g, acc, sq, buf, ga, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _rmsprop_run(p + lo, g + lo, acc + lo, sq + lo, buf + lo, ga + lo, hi - lo, k)


cdef inline void _rmsprop_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi,
                                uint32_t key, const RmspropK* kp, bint use_acc,
                                bint use_momentum, bint centered, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc/use_momentum/centered are constants here (see _rmsprop_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[7]
    cdef int f[7]
    local_row(row, codes, a, f, 7)
    apply_recipe(f, 7, recipe)   # known formats as constants (see _rmsprop_segment)
    cdef RmspropK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float S[16]
    cdef float B[16]
    cdef float GA[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, lr = <float>k.lr, alpha = <float>k.alpha, oma = <float>k.oma
    cdef float eps = <float>k.eps, wd = <float>k.wd, mu = <float>k.mu
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        fgd_ld(f[3], a[3], b, S, c)
        if use_momentum:
            fgd_ld(f[4], a[4], b, B, c)
        if centered:
            fgd_ld(f[5], a[5], b, GA, c)
        _rmsprop_body(P, G, A, S, B, GA, FGD_LANES, gs, use_acc, lr, alpha, oma, eps, wd,
                      k.decay, mu, use_momentum, centered)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[6] >= 0:
            fgd_st(f[6], P, a[6], b, c, key, 6)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        fgd_st(f[3], S, a[3], b, c, key, 3)
        if use_momentum:
            fgd_st(f[4], B, a[4], b, c, key, 4)
        if centered:
            fgd_st(f[5], GA, a[5], b, c, key, 5)
        b = b + FGD_LANES


cdef void _rmsprop_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                           const void* kv) noexcept nogil:
    # One tensor's piece of rmsprop_many. Roles: p, g, acc, sq, buf, ga, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 7)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const RmspropK* k = <const RmspropK*>kv
    cdef int kind = compute_kind(f, 7)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _rmsprop_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                     <float*>a[4] + lo, <float*>a[5] + lo, hi - lo, k)
    elif kind == 3:
        _rmsprop_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo,
                     <double*>a[3] + lo, <double*>a[4] + lo, <double*>a[5] + lo, hi - lo, k)
    # the flags that choose which roles are touched as constants, one lane loop each (adam.pyx)
    elif k.use_acc:
        if k.use_momentum:
            if k.centered:
                _rmsprop_lanes(a, f, lo, hi, key, k, True, True, True, -9)
            else:
                _rmsprop_lanes(a, f, lo, hi, key, k, True, True, False, -9)
        elif k.centered:
            _rmsprop_lanes(a, f, lo, hi, key, k, True, False, True, -9)
        else:
            _rmsprop_lanes(a, f, lo, hi, key, k, True, False, False, -9)
    elif k.use_momentum:
        if k.centered:
            if recipe == 0:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 0)
            elif recipe == 1:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 1)
            elif recipe == 2:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 2)
            elif recipe == 3:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 3)
            elif recipe == 4:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 4)
            elif recipe == 5:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 5)
            elif recipe == 6:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 6)
            elif recipe == 7:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 7)
            elif recipe == 8:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 8)
            elif recipe == 9:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 9)
            elif recipe == 10:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, 10)
            else:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, True, -9)
        else:
            if recipe == 0:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 0)
            elif recipe == 1:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 1)
            elif recipe == 2:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 2)
            elif recipe == 3:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 3)
            elif recipe == 4:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 4)
            elif recipe == 5:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 5)
            elif recipe == 6:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 6)
            elif recipe == 7:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 7)
            elif recipe == 8:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 8)
            elif recipe == 9:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 9)
            elif recipe == 10:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, 10)
            else:
                _rmsprop_lanes(a, f, lo, hi, key, k, False, True, False, -9)
    elif k.centered:
        if recipe == 0:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 0)
        elif recipe == 1:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 1)
        elif recipe == 2:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 2)
        elif recipe == 3:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 3)
        elif recipe == 4:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 4)
        elif recipe == 5:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 5)
        elif recipe == 6:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 6)
        elif recipe == 7:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 7)
        elif recipe == 8:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 8)
        elif recipe == 9:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 9)
        elif recipe == 10:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, 10)
        else:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, True, -9)
    else:
        if recipe == 0:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 0)
        elif recipe == 1:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 1)
        elif recipe == 2:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 2)
        elif recipe == 3:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 3)
        elif recipe == 4:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 4)
        elif recipe == 5:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 5)
        elif recipe == 6:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 6)
        elif recipe == 7:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 7)
        elif recipe == 8:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 8)
        elif recipe == 9:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 9)
        elif recipe == 10:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, 10)
        else:
            _rmsprop_lanes(a, f, lo, hi, key, k, False, False, False, -9)


def rmsprop_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
                 double grad_scale, bint maximize, bint use_acc, double lr, double alpha,
                 double eps, double weight_decay, double momentum, bint centered):
    """RMSprop over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef RmspropK k = _rmsprop_k(grad_scale, maximize, use_acc, lr, alpha, eps, weight_decay,
                                 momentum, centered)
    run_many(_rmsprop_segment, ptrs, offsets, fmts, keys, 7, &k, lane_roles(7, k.use_acc, -1 if k.use_momentum else 4, -1 if k.centered else 5))


def rmsprop(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray square_avg,
            cnp.ndarray momentum_buffer, cnp.ndarray grad_avg, double grad_scale, bint maximize,
            bint use_acc, double lr, double alpha, double eps, double weight_decay,
            double momentum, bint centered):
    """RMSprop step in place (module docstring).

    momentum_buffer is touched only if momentum > 0, grad_avg only if centered: pass square_avg
    in their places otherwise. grad_acc is read and zeroed only if use_acc (else pass param).
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* sq = data_of(square_avg, n, typenum)
    cdef void* buf = data_of(momentum_buffer, n, typenum)
    cdef void* ga = data_of(grad_avg, n, typenum)
    if n == 0:
        return
    cdef RmspropK k = _rmsprop_k(grad_scale, maximize, use_acc, lr, alpha, eps, weight_decay,
                                 momentum, centered)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _rmsprop(<float*>p, <float*>g, <float*>acc, <float*>sq, <float*>buf, <float*>ga, n,
                     &k)
        else:
            _rmsprop(<double*>p, <double*>g, <double*>acc, <double*>sq, <double*>buf,
                     <double*>ga, n, &k)
