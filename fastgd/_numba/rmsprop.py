"""RMSprop in Numba: the twin of kernels/rmsprop.pyx, same signature and maths."""
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel
from ._many import many_kernel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _rmsprop_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr ... centered), cast to ``real`` once."""
    lr, alpha, eps, weight_decay, momentum, centered = s
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    a = real(alpha)
    oma = real(1.0 - alpha)
    e = real(eps)
    mu = real(momentum)
    step = real(lr)
    return gs, decay, wd, a, oma, e, mu, step


@njit(inline="always", **_OPTIONS)
def _rmsprop_step(i, c, flags, param, grad, grad_acc, square_avg, momentum_buffer, grad_avg):
    """Element i of the step (the single kernel's loop body and rmsprop_many's); returns the
    new param value. flags = (use_acc, centered, use_momentum), literal constants."""
    gs, decay, wd, a, oma, e, mu, step = c
    use_acc, centered, use_momentum = flags
    pi = param[i]
    gi = _grad(grad, grad_acc, i, gs, use_acc)
    if decay:
        gi = gi + wd * pi
    si = a * square_avg[i] + oma * gi * gi
    square_avg[i] = si
    if centered:
        ai = grad_avg[i] + oma * (gi - grad_avg[i])
        grad_avg[i] = ai
        si = si - ai * ai
    d = np.sqrt(si) + e
    if use_momentum:
        bi = mu * momentum_buffer[i] + gi / d
        momentum_buffer[i] = bi
        pi = pi - step * bi
    else:
        pi = pi - step * (gi / d)
    param[i] = pi
    return pi


@njit(inline="always", **_OPTIONS)
def _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c, flags):
    for i in prange(param.shape[0]):
        _rmsprop_step(i, c, flags, param, grad, grad_acc, square_avg, momentum_buffer, grad_avg)


def _rmsprop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, grad_scale, maximize,
             use_acc, lr, alpha, eps, weight_decay, momentum, centered):
    """RMSprop step in place.

    g += wd * p;  sq = a * sq + (1 - a) * g * g
    centered: ga += (1 - a) * (g - ga);  d = sqrt(sq - ga * ga) + eps;  else d = sqrt(sq) + eps
    momentum > 0: buf = mu * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
    """
    c = _rmsprop_consts(param.dtype.type, grad_scale, maximize,
                        (lr, alpha, eps, weight_decay, momentum, centered))
    use_momentum = momentum > 0.0
    # The flags that choose which arrays the loop touches are literal constants, one loop each:
    # unused arrays are stand-ins aliasing used ones, and a loop that still mentions them fails
    # LLVM's runtime alias check and runs scalar (0.35 of bandwidth at 16M float32, measured).
    if use_acc:
        if centered:
            if use_momentum:
                _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                              (True, True, True))
            else:
                _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                              (True, True, False))
        elif use_momentum:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                          (True, False, True))
        else:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                          (True, False, False))
    elif centered:
        if use_momentum:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                          (False, True, True))
        else:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                          (False, True, False))
    elif use_momentum:
        _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                      (False, False, True))
    else:
        _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, c,
                      (False, False, False))


rmsprop = serial_and_parallel(_rmsprop)


def _rmsprop_flags(use_acc, s):
    """(use_acc, centered, use_momentum); left out: grad_acc (2) without use_acc, the buffer
    (4) without momentum, grad_avg (5) unless centered."""
    centered, use_momentum = bool(s[5]), s[4] > 0.0
    unused = (() if use_acc else (2,)) + (() if use_momentum else (4,)) + (() if centered else (5,))
    return (bool(use_acc), centered, use_momentum), unused


rmsprop_many = many_kernel("rmsprop", _rmsprop_consts, _rmsprop_step, 3, _rmsprop_flags)
