"""Adagrad: step sizes from a running sum of g^2, one fused pass.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    s += g * g;  p -= clr * g / (sqrt(s) + eps)     (clr = lr / (1 + (t - 1) * lr_decay))
"""
from cython cimport floating
from cython.parallel cimport prange
cimport numpy as cnp

from _arrays cimport data_of, float_typenum
from _math cimport _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()


cdef void _adagrad_piece(floating* p, const floating* g, floating* acc, floating* s, Py_ssize_t n,
                         floating gs, bint use_acc, floating clr, floating wd, bint decay,
                         floating eps) noexcept nogil:
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


cdef void _adagrad(floating* p, const floating* g, floating* acc, floating* s, Py_ssize_t n,
                   double grad_scale, bint maximize, bint use_acc, double clr,
                   double weight_decay, double eps) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint decay = weight_decay != 0.0
    if nthreads == 1:
        _adagrad_piece(p, g, acc, s, n, gs, use_acc, <floating>clr, <floating>weight_decay, decay,
                       <floating>eps)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adagrad_piece(p + lo, g + lo, acc + lo, s + lo, hi - lo, gs, use_acc, <floating>clr,
                           <floating>weight_decay, decay, <floating>eps)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adagrad(<float*>p, <float*>g, <float*>acc, <float*>s, n, grad_scale, maximize, use_acc,
                     clr, weight_decay, eps)
        else:
            _adagrad(<double*>p, <double*>g, <double*>acc, <double*>s, n, grad_scale, maximize,
                     use_acc, clr, weight_decay, eps)
