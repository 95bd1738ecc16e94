"""SGD with momentum, dampening, Nesterov and weight decay: one fused pass (torch.optim.SGD).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    momentum: buf = g at the first step, else buf = mu * buf + (1 - dampening) * g
              g = g + mu * buf (nesterov) | g = buf
    p -= lr * g
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

# _sgd_piece not inlined: sgd and sgd_many's float32/float64 path run one machine code, so
# their results are bitwise the same; _sgd_lanes always inlined, so each call of
# _sgd_segment has its flags as constants (kernels/_layout.pxd, "noinline").
cdef extern from *:
    """
    static void __pyx_fuse_0__pyx_f_6fastgd_7_cython_3sgd__sgd_piece(float *, float const *, float *, float *, Py_ssize_t, float, int, float, float, float, float, int, int, int, int) __attribute__((noinline));
    static void __pyx_fuse_1__pyx_f_6fastgd_7_cython_3sgd__sgd_piece(double *, double const *, double *, double *, Py_ssize_t, double, int, double, double, double, double, int, int, int, int) __attribute__((noinline));
    struct __pyx_t_6fastgd_7_cython_3sgd_SgdK;
    static inline void __pyx_f_6fastgd_7_cython_3sgd__sgd_lanes(char **, int const *, Py_ssize_t, Py_ssize_t, uint32_t, struct __pyx_t_6fastgd_7_cython_3sgd_SgdK const *, int, int, int) __attribute__((always_inline));
    """


cdef inline void _sgd_body(floating* p, const floating* g, floating* acc, floating* buf,
                           Py_ssize_t n, floating gs, bint use_acc, floating lr, floating mu,
                           floating omd, floating wd, bint decay, bint use_momentum,
                           bint nesterov, bint first) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, bi
    for i in range(n):
        pi = p[i]
        gi = _grad(g, acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        if use_momentum:
            if first:
                bi = gi
            else:
                bi = mu * buf[i] + omd * gi
            buf[i] = bi
            if nesterov:
                gi = gi + mu * bi
            else:
                gi = bi
        p[i] = pi - lr * gi


cdef void _sgd_piece(floating* p, const floating* g, floating* acc, floating* buf, Py_ssize_t n,
                     floating gs, bint use_acc, floating lr, floating mu, floating omd,
                     floating wd, bint decay, bint use_momentum, bint nesterov,
                     bint first) noexcept nogil:
    # Every bint is loop invariant: gcc unswitches them into branch-free vector loops.
    _sgd_body(p, g, acc, buf, n, gs, use_acc, lr, mu, omd, wd, decay, use_momentum, nesterov,
              first)


ctypedef struct SgdK:
    # the kernel's scalars as its loops take them (cast to the arithmetic's type at the call)
    double gs, lr, mu, omd, wd
    bint use_acc, decay, use_momentum, nesterov, first


cdef SgdK _sgd_k(double grad_scale, bint maximize, bint use_acc, double lr, double momentum,
                 double dampening, double weight_decay, bint nesterov, bint first) noexcept nogil:
    cdef SgdK k
    k.gs = -grad_scale if maximize else grad_scale
    k.lr = lr
    k.mu = momentum
    k.omd = 1.0 - dampening
    k.wd = weight_decay
    k.use_acc = use_acc
    k.decay = weight_decay != 0.0
    k.use_momentum = momentum != 0.0
    k.nesterov = nesterov
    k.first = first
    return k


cdef inline void _sgd_run(floating* p, const floating* g, floating* acc, floating* buf,
                          Py_ssize_t n, const SgdK* k) noexcept nogil:
    _sgd_piece(p, g, acc, buf, n, <floating>k.gs, k.use_acc, <floating>k.lr, <floating>k.mu,
               <floating>k.omd, <floating>k.wd, k.decay, k.use_momentum, k.nesterov, k.first)


cdef void _sgd(floating* p, const floating* g, floating* acc, floating* buf, Py_ssize_t n,
               const SgdK* k) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    if nthreads == 1:
        _sgd_run(p, g, acc, buf, n, k)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _sgd_run(p + lo, g + lo, acc + lo, buf + lo, hi - lo, k)


cdef inline void _sgd_lanes(char** row, const int* codes, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                            const SgdK* kp, bint use_acc, bint use_momentum, int recipe) noexcept nogil:
    # 16 lanes of each role loaded to float32, the single kernel's body on them, stored back in
    # each role's format. use_acc/use_momentum are constants here (see _sgd_segment).
    # the row and codes in locals: read through the pointers, every store through a char*
    # (any role) could alias them, and gcc reloaded them every 16 lanes
    cdef char* a[5]
    cdef int f[5]
    local_row(row, codes, a, f, 5)
    apply_recipe(f, 5, recipe)   # known formats as constants (see _sgd_segment)
    cdef SgdK k = kp[0]       # a local copy, for the same reason
    cdef float P[16]
    cdef float G[16]
    cdef float A[16]
    cdef float B[16]
    cdef Py_ssize_t b = lo
    cdef int c
    cdef float gs = <float>k.gs, lr = <float>k.lr, mu = <float>k.mu, omd = <float>k.omd
    cdef float wd = <float>k.wd
    while b < hi:
        c = FGD_LANES      # whole vectors only: the layout stages a tail (kernels/_layout.pxd)
        fgd_ld(f[0], a[0], b, P, c)
        fgd_ld(f[1], a[1], b, G, c)
        if use_acc:
            fgd_ld(f[2], a[2], b, A, c)
        if use_momentum:
            fgd_ld(f[3], a[3], b, B, c)
        _sgd_body(P, G, A, B, FGD_LANES, gs, use_acc, lr, mu, omd, wd, k.decay, use_momentum,
                  k.nesterov, k.first)
        fgd_st(f[0], P, a[0], b, c, key, 0)
        if f[4] >= 0:
            fgd_st(f[4], P, a[4], b, c, key, 4)
        if use_acc:
            fgd_st(f[2], A, a[2], b, c, key, 2)
        if use_momentum:
            fgd_st(f[3], B, a[3], b, c, key, 3)
        b = b + FGD_LANES


cdef void _sgd_segment(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                       const void* kv) noexcept nogil:
    # One tensor's piece of sgd_many. Roles: p, g, acc, buf, out (kernels/CONTRACT.md).
    cdef int recipe = recipe_of(f, 5)   # the known recipe these codes are, or -1 (kernels/_layout.pxd)
    cdef const SgdK* k = <const SgdK*>kv
    cdef int kind = compute_kind(f, 5)
    if kind == 0:       # all float32, or all float64: the single kernel's loop on the memory
        _sgd_run(<float*>a[0] + lo, <float*>a[1] + lo, <float*>a[2] + lo, <float*>a[3] + lo,
                 hi - lo, k)
    elif kind == 3:
        _sgd_run(<double*>a[0] + lo, <double*>a[1] + lo, <double*>a[2] + lo, <double*>a[3] + lo,
                 hi - lo, k)
    # the flags that choose which roles are touched as constants, one lane loop each (adam.pyx)
    elif k.use_acc:
        if k.use_momentum:
            _sgd_lanes(a, f, lo, hi, key, k, True, True, -9)
        else:
            _sgd_lanes(a, f, lo, hi, key, k, True, False, -9)
    elif k.use_momentum:
        if recipe == 0:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 0)
        elif recipe == 1:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 1)
        elif recipe == 2:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 2)
        elif recipe == 3:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 3)
        elif recipe == 4:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 4)
        elif recipe == 5:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 5)
        elif recipe == 6:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 6)
        elif recipe == 7:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 7)
        elif recipe == 8:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 8)
        elif recipe == 9:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 9)
        elif recipe == 10:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, 10)
        else:
            _sgd_lanes(a, f, lo, hi, key, k, False, True, -9)
    else:
        if recipe == 0:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 0)
        elif recipe == 1:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 1)
        elif recipe == 2:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 2)
        elif recipe == 3:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 3)
        elif recipe == 4:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 4)
        elif recipe == 5:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 5)
        elif recipe == 6:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 6)
        elif recipe == 7:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 7)
        elif recipe == 8:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 8)
        elif recipe == 9:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 9)
        elif recipe == 10:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, 10)
        else:
            _sgd_lanes(a, f, lo, hi, key, k, False, False, -9)


def sgd_many(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts, cnp.ndarray keys,
             double grad_scale, bint maximize, bint use_acc, double lr, double momentum,
             double dampening, double weight_decay, bint nesterov, bint first):
    """SGD over a table of tensors in any storage formats (kernels/CONTRACT.md, <rule>_many)."""
    cdef SgdK k = _sgd_k(grad_scale, maximize, use_acc, lr, momentum, dampening, weight_decay,
                         nesterov, first)
    run_many(_sgd_segment, ptrs, offsets, fmts, keys, 5, &k, lane_roles(5, k.use_acc, -1 if k.use_momentum else 3))


def sgd(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray momentum_buffer,
        double grad_scale, bint maximize, bint use_acc, double lr, double momentum,
        double dampening, double weight_decay, bint nesterov, bint first):
    """SGD step in place (module docstring); arrays validated by fastgd.functional.

    momentum_buffer is touched only if momentum != 0 (pass param in its place otherwise);
    first: the buffer's first step (buf = g). grad_acc is read and zeroed only if use_acc.
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* buf = data_of(momentum_buffer, n, typenum)
    if n == 0:
        return
    cdef SgdK k = _sgd_k(grad_scale, maximize, use_acc, lr, momentum, dampening, weight_decay,
                         nesterov, first)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _sgd(<float*>p, <float*>g, <float*>acc, <float*>buf, n, &k)
        else:
            _sgd(<double*>p, <double*>g, <double*>acc, <double*>buf, n, &k)
