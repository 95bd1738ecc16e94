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

from _arrays cimport data_of, float_typenum
from _math cimport _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()


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


cdef void _rmsprop(floating* p, const floating* g, floating* acc, floating* sq, floating* buf,
                   floating* ga, Py_ssize_t n, double grad_scale, bint maximize, bint use_acc,
                   double lr, double alpha, double eps, double weight_decay, double momentum,
                   bint centered) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint decay = weight_decay != 0.0
    cdef bint use_momentum = momentum > 0.0
    if nthreads == 1:
        _rmsprop_piece(p, g, acc, sq, buf, ga, n, gs, use_acc, <floating>lr, <floating>alpha,
                       <floating>(1.0 - alpha), <floating>eps, <floating>weight_decay, decay,
                       <floating>momentum, use_momentum, centered)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _rmsprop_piece(p + lo, g + lo, acc + lo, sq + lo, buf + lo, ga + lo, hi - lo, gs,
                           use_acc, <floating>lr, <floating>alpha, <floating>(1.0 - alpha),
                           <floating>eps, <floating>weight_decay, decay, <floating>momentum,
                           use_momentum, centered)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _rmsprop(<float*>p, <float*>g, <float*>acc, <float*>sq, <float*>buf, <float*>ga, n,
                     grad_scale, maximize, use_acc, lr, alpha, eps, weight_decay, momentum, centered)
        else:
            _rmsprop(<double*>p, <double*>g, <double*>acc, <double*>sq, <double*>buf, <double*>ga,
                     n, grad_scale, maximize, use_acc, lr, alpha, eps, weight_decay, momentum,
                     centered)
