"""RAdam in Numba: the twin of kernels/radam.pyx, same signature and maths."""
import numpy as np
from numba import prange

from ._compile import serial_and_parallel
from ._math import _adam_moments


def _radam(param, grad, grad_acc, exp_avg, exp_avg_sq, grad_scale, maximize, use_acc, lr, beta1,
           beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2, adaptive, rect):
    """RAdam step in place: g += wd * p | p *= 1 - lr * wd;  m, v as Adam;
    adaptive: p -= (lr * rect * sqrt(bc2) / bc1) * m / (sqrt(v) + eps), else p -= (lr / bc1) * m."""
    n = param.shape[0]
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    coupled = weight_decay != 0.0 and not decoupled
    wd = real(weight_decay)
    decay = real(1.0 - lr * weight_decay) if decoupled else real(1.0)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    omb2 = real(1.0 - beta2)
    e = real(eps)
    if adaptive:
        step_size = real(lr * rect * np.sqrt(bias_correction2) / bias_correction1)
    else:
        step_size = real(lr / bias_correction1)
    for i in prange(n):
        pi = param[i]
        # The gradient read written out, not _grad: with _grad inlined too, the serial loop
        # outgrows LLVM's unswitching budget and stays scalar (inspect_asm: no vector ops).
        if use_acc:
            gi = (grad_acc[i] + grad[i]) * gs
            grad_acc[i] = 0
        else:
            gi = grad[i] * gs
        if coupled:
            gi = gi + wd * pi
        pi = pi * decay
        mi, vi = _adam_moments(exp_avg, exp_avg_sq, i, gi, omb1, b2, omb2)
        if adaptive:
            param[i] = pi - step_size * mi / (np.sqrt(vi) + e)
        else:
            param[i] = pi - step_size * mi


radam = serial_and_parallel(_radam)
