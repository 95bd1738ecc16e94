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

from _arrays cimport data_of, float_typenum
from _math cimport _adam_moments, _grad, _sqrt
from _parallel cimport piece_start, threads_for

cnp.import_array()


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


cdef void _adam(floating* p, const floating* g, floating* acc, floating* m, floating* v,
                floating* vmax, Py_ssize_t n, double grad_scale, bint maximize, bint use_acc,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                bint decoupled, bint amsgrad, double bias_correction1,
                double bias_correction2) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint coupled = weight_decay != 0.0 and not decoupled
    cdef floating decay = (1.0 - lr * weight_decay) if decoupled else 1.0
    cdef floating step_size = lr / bias_correction1
    cdef floating rbc2 = 1.0 / sqrt(bias_correction2)
    if nthreads == 1:
        _adam_piece(p, g, acc, m, v, vmax, n, gs, use_acc, <floating>weight_decay, decay,
                    <floating>(1.0 - beta1),
                    <floating>beta2, <floating>(1.0 - beta2), step_size, rbc2, <floating>eps,
                    coupled, amsgrad)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adam_piece(p + lo, g + lo, acc + lo, m + lo, v + lo, vmax + lo, hi - lo, gs, use_acc,
                        <floating>weight_decay,
                        decay, <floating>(1.0 - beta1), <floating>beta2, <floating>(1.0 - beta2),
                        step_size, rbc2, <floating>eps, coupled, amsgrad)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adam(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>v, <float*>vmax, n,
                  grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay, decoupled,
                  amsgrad, bias_correction1, bias_correction2)
        else:
            _adam(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>v, <double*>vmax, n,
                  grad_scale, maximize, use_acc, lr, beta1, beta2, eps, weight_decay, decoupled,
                  amsgrad, bias_correction1, bias_correction2)
