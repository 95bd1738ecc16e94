"""RMSprop in Numba: the twin of kernels/rmsprop.pyx, same signature and maths."""
import numpy as np
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
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


def _rmsprop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, grad_scale, maximize,
             use_acc, lr, alpha, eps, weight_decay, momentum, centered, loops):
    """RMSprop step in place.

    g += wd * p;  sq = a * sq + (1 - a) * g * g
    centered: ga += (1 - a) * (g - ga);  d = sqrt(sq - ga * ga) + eps;  else d = sqrt(sq) + eps
    momentum > 0: buf = mu * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
    """
    c = _rmsprop_consts(param.dtype.type, grad_scale, maximize,
                        (lr, alpha, eps, weight_decay, momentum, centered))
    return run_loop(loops, flag_index(use_acc, centered, momentum > 0.0), c,
                    (param, grad, grad_acc, square_avg, momentum_buffer, grad_avg))


rmsprop = single_kernel(_rmsprop, _rmsprop_consts, _rmsprop_step, 3, 3)


def _rmsprop_flags(use_acc, s):
    """(use_acc, centered, use_momentum); left out: grad_acc (2) without use_acc, the buffer
    (4) without momentum, grad_avg (5) unless centered."""
    centered, use_momentum = bool(s[5]), s[4] > 0.0
    unused = (() if use_acc else (2,)) + (() if use_momentum else (4,)) + (() if centered else (5,))
    return (bool(use_acc), centered, use_momentum), unused


rmsprop_many = many_kernel("rmsprop", _rmsprop_consts, _rmsprop_step, 3, _rmsprop_flags)
