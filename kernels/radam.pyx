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

from _arrays cimport data_of, float_typenum
from _math cimport _adam_moments, _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()


cdef void _radam_piece(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                       Py_ssize_t n, floating gs, bint use_acc, floating wd, bint coupled,
                       floating decay, floating omb1, floating b2, floating omb2, floating eps,
                       floating step_size, bint adaptive) noexcept nogil:
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


cdef void _radam(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                 Py_ssize_t n, double grad_scale, bint maximize, bint use_acc, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bint decoupled,
                 double bias_correction1, double bias_correction2, bint adaptive,
                 double rect) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint coupled = weight_decay != 0.0 and not decoupled
    cdef floating decay = (1.0 - lr * weight_decay) if decoupled else 1.0
    cdef floating step_size
    if adaptive:
        step_size = lr * rect * sqrt(bias_correction2) / bias_correction1
    else:
        step_size = lr / bias_correction1
    if nthreads == 1:
        _radam_piece(p, g, acc, m, v, n, gs, use_acc, <floating>weight_decay, coupled, decay,
                     <floating>(1.0 - beta1), <floating>beta2, <floating>(1.0 - beta2),
                     <floating>eps, step_size, adaptive)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _radam_piece(p + lo, g + lo, acc + lo, m + lo, v + lo, hi - lo, gs, use_acc,
                         <floating>weight_decay, coupled, decay, <floating>(1.0 - beta1),
                         <floating>beta2, <floating>(1.0 - beta2), <floating>eps, step_size,
                         adaptive)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _radam(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>v, n, grad_scale,
                   maximize, use_acc, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, adaptive, rect)
        else:
            _radam(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>v, n, grad_scale,
                   maximize, use_acc, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, adaptive, rect)
