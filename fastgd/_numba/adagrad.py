"""Adagrad in Numba: the twin of kernels/adagrad.pyx, same signature and maths."""
import numpy as np
from numba import prange

from ._compile import serial_and_parallel
from ._math import _grad


def _adagrad(param, grad, grad_acc, state_sum, grad_scale, maximize, use_acc, clr, weight_decay,
             eps):
    """Adagrad step in place: g += wd * p;  s += g * g;  p -= clr * g / (sqrt(s) + eps)."""
    n = param.shape[0]
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    step = real(clr)
    e = real(eps)
    for i in prange(n):
        pi = param[i]
        gi = _grad(grad, grad_acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        si = state_sum[i] + gi * gi
        state_sum[i] = si
        param[i] = pi - step * (gi / (np.sqrt(si) + e))


adagrad = serial_and_parallel(_adagrad)
