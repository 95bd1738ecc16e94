"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): one fused pass.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    c = b1 * m + (1 - b1) * g
    p = p * (1 - lr * wd) - lr * sign(c)
    m = b2 * m + (1 - b2) * g
"""
from cython cimport floating
from cython.parallel cimport prange
cimport numpy as cnp

from _arrays cimport data_of, float_typenum
from _math cimport _grad
from _parallel cimport piece_start, threads_for

cnp.import_array()


cdef void _lion_piece(floating* p, const floating* g, floating* acc, floating* m, Py_ssize_t n,
                      floating gs, bint use_acc, floating lr, floating decay, floating b1,
                      floating omb1, floating b2, floating omb2) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, c, s
    for i in range(n):
        gi = _grad(g, acc, i, gs, use_acc)
        mi = m[i]
        c = b1 * mi + omb1 * gi
        # sign(c) as np.sign: 0 at 0, NaN stays NaN (a diverged run shows, instead of freezing).
        s = <floating>(c > 0) - <floating>(c < 0)
        if c != c:
            s = c
        p[i] = p[i] * decay - lr * s
        m[i] = b2 * mi + omb2 * gi


cdef void _lion(floating* p, const floating* g, floating* acc, floating* m, Py_ssize_t n,
                double grad_scale, bint maximize, bint use_acc, double lr, double beta1,
                double beta2, double weight_decay) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef floating decay = 1.0 - lr * weight_decay
    if nthreads == 1:
        _lion_piece(p, g, acc, m, n, gs, use_acc, <floating>lr, decay, <floating>beta1,
                    <floating>(1.0 - beta1), <floating>beta2, <floating>(1.0 - beta2))
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _lion_piece(p + lo, g + lo, acc + lo, m + lo, hi - lo, gs, use_acc, <floating>lr,
                        decay, <floating>beta1, <floating>(1.0 - beta1), <floating>beta2,
                        <floating>(1.0 - beta2))


def lion(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray grad_acc, cnp.ndarray exp_avg,
         double grad_scale, bint maximize, bint use_acc, double lr, double beta1, double beta2,
         double weight_decay):
    """Lion step in place (module docstring). grad_acc is used only if use_acc (else pass param)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef int typenum = float_typenum(param)
    cdef void* p = data_of(param, n, typenum)
    cdef void* g = data_of(grad, n, typenum, False)
    cdef void* acc = data_of(grad_acc, n, typenum, use_acc)
    cdef void* m = data_of(exp_avg, n, typenum)
    if n == 0:
        return
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _lion(<float*>p, <float*>g, <float*>acc, <float*>m, n, grad_scale, maximize, use_acc,
                  lr, beta1, beta2, weight_decay)
        else:
            _lion(<double*>p, <double*>g, <double*>acc, <double*>m, n, grad_scale, maximize,
                  use_acc, lr, beta1, beta2, weight_decay)
