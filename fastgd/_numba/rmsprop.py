"""RMSprop in Numba: the twin of kernels/rmsprop.pyx, same signature and maths."""
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay, wd, a, oma,
                  e, mu, step, use_acc, centered, use_momentum):
    for i in prange(param.shape[0]):
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
            param[i] = pi - step * bi
        else:
            param[i] = pi - step * (gi / d)


def _rmsprop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, grad_scale, maximize,
             use_acc, lr, alpha, eps, weight_decay, momentum, centered):
    """RMSprop step in place.

    g += wd * p;  sq = a * sq + (1 - a) * g * g
    centered: ga += (1 - a) * (g - ga);  d = sqrt(sq - ga * ga) + eps;  else d = sqrt(sq) + eps
    momentum > 0: buf = mu * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
    """
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    use_momentum = momentum > 0.0
    wd = real(weight_decay)
    a = real(alpha)
    oma = real(1.0 - alpha)
    e = real(eps)
    mu = real(momentum)
    step = real(lr)
    # The flags that choose which arrays the loop touches are literal constants, one loop each:
    # unused arrays are stand-ins aliasing used ones, and a loop that still mentions them fails
    # LLVM's runtime alias check and runs scalar (0.35 of bandwidth at 16M float32, measured).
    if use_acc:
        if centered:
            if use_momentum:
                _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                              wd, a, oma, e, mu, step, True, True, True)
            else:
                _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                              wd, a, oma, e, mu, step, True, True, False)
        elif use_momentum:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                          wd, a, oma, e, mu, step, True, False, True)
        else:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                          wd, a, oma, e, mu, step, True, False, False)
    elif centered:
        if use_momentum:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                          wd, a, oma, e, mu, step, False, True, True)
        else:
            _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                          wd, a, oma, e, mu, step, False, True, False)
    elif use_momentum:
        _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                      wd, a, oma, e, mu, step, False, False, True)
    else:
        _rmsprop_loop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, gs, decay,
                      wd, a, oma, e, mu, step, False, False, False)


rmsprop = serial_and_parallel(_rmsprop)
