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

from _arrays cimport data_of, float_typenum
from _math cimport _grad
from _parallel cimport piece_start, threads_for

cnp.import_array()


cdef void _sgd_piece(floating* p, const floating* g, floating* acc, floating* buf, Py_ssize_t n,
                     floating gs, bint use_acc, floating lr, floating mu, floating omd,
                     floating wd, bint decay, bint use_momentum, bint nesterov,
                     bint first) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, bi
    # Every bint is loop invariant: gcc unswitches them into branch-free vector loops.
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


cdef void _sgd(floating* p, const floating* g, floating* acc, floating* buf, Py_ssize_t n,
               double grad_scale, bint maximize, bint use_acc, double lr, double momentum,
               double dampening, double weight_decay, bint nesterov, bint first) noexcept nogil:
    cdef Py_ssize_t lo, hi
    cdef int t, nthreads = threads_for(n)
    cdef floating gs = -grad_scale if maximize else grad_scale
    cdef bint decay = weight_decay != 0.0
    cdef bint use_momentum = momentum != 0.0
    if nthreads == 1:
        _sgd_piece(p, g, acc, buf, n, gs, use_acc, <floating>lr, <floating>momentum,
                   <floating>(1.0 - dampening), <floating>weight_decay, decay, use_momentum,
                   nesterov, first)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        lo = piece_start(n, nthreads, t)
        hi = piece_start(n, nthreads, t + 1)
        if hi > lo:
            _sgd_piece(p + lo, g + lo, acc + lo, buf + lo, hi - lo, gs, use_acc, <floating>lr,
                       <floating>momentum, <floating>(1.0 - dampening), <floating>weight_decay,
                       decay, use_momentum, nesterov, first)


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
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _sgd(<float*>p, <float*>g, <float*>acc, <float*>buf, n, grad_scale, maximize, use_acc,
                 lr, momentum, dampening, weight_decay, nesterov, first)
        else:
            _sgd(<double*>p, <double*>g, <double*>acc, <double*>buf, n, grad_scale, maximize,
                 use_acc, lr, momentum, dampening, weight_decay, nesterov, first)
