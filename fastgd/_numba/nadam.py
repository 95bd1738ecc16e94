"""NAdam in Numba: the twin of kernels/nadam.pyx, same signature and maths."""
import numpy as np
from numba import prange

from ._compile import serial_and_parallel
from ._math import _adam_moments


def _nadam(param, grad, grad_acc, exp_avg, exp_avg_sq, grad_scale, maximize, use_acc, lr, beta1,
           beta2, eps, weight_decay, decoupled, grad_coef, avg_coef, bias_correction2):
    """NAdam step in place: g += wd * p | p *= 1 - lr * wd;  m, v as Adam;
    p -= (grad_coef * g + avg_coef * m) / (sqrt(v) / sqrt(bc2) + eps)."""
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
    rbc2 = real(1.0 / np.sqrt(bias_correction2))
    cg = real(grad_coef)
    cm = real(avg_coef)
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
        d = np.sqrt(vi) * rbc2 + e
        param[i] = pi - (cg * gi + cm * mi) / d


nadam = serial_and_parallel(_nadam)
