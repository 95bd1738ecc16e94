"""Adamax: Adam with an infinity-norm second moment, one fused pass (torch.optim's formulas).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p;  m += (1 - b1) * (g - m);  u = max(b2 * u, |g| + eps);  p -= (lr / bc1) * m / u
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport fabs, fabsf
cimport numpy as cnp

from _arrays cimport data_of, float_typenum
from _math cimport _grad
from _parallel cimport piece_start, threads_for

cnp.import_array()


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef void _adamax_piece(floating* p, const floating* g, floating* acc, floating* m, floating* u,
                        Py_ssize_t n, floating gs, bint use_acc, floating wd, bint decay,
                        floating omb1, floating b2, floating eps, floating step_size) noexcept nogil:
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


cdef void _adamax(floating* p, const floating* g, floating* acc, floating* m, floating* u,
                  Py_ssize_t n, double grad_scale, bint maximize, bint use_acc, double lr,
                  double beta1, double beta2, double eps, double weight_decay,
                  double bias_correction1) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint decay = weight_decay != 0.0
    cdef floating step_size = lr / bias_correction1
    if nthreads == 1:
        _adamax_piece(p, g, acc, m, u, n, gs, use_acc, <floating>weight_decay, decay,
                      <floating>(1.0 - beta1), <floating>beta2, <floating>eps, step_size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _adamax_piece(p + lo, g + lo, acc + lo, m + lo, u + lo, hi - lo, gs, use_acc,
                          <floating>weight_decay, decay, <floating>(1.0 - beta1), <floating>beta2,
                          <floating>eps, step_size)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _adamax(<float*>p, <float*>g, <float*>acc, <float*>m, <float*>u, n, grad_scale,
                    maximize, use_acc, lr, beta1, beta2, eps, weight_decay, bias_correction1)
        else:
            _adamax(<double*>p, <double*>g, <double*>acc, <double*>m, <double*>u, n, grad_scale,
                    maximize, use_acc, lr, beta1, beta2, eps, weight_decay, bias_correction1)
