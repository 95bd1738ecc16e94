"""Adamax in Numba: the twin of kernels/adamax.pyx, same signature and maths."""
import numpy as np
from numba import prange

from ._compile import serial_and_parallel
from ._math import _grad


def _adamax(param, grad, grad_acc, exp_avg, exp_inf, grad_scale, maximize, use_acc, lr, beta1,
            beta2, eps, weight_decay, bias_correction1):
    """Adamax step in place: g += wd * p;  m += (1 - b1) * (g - m);  u = max(b2 * u, |g| + eps);
    p -= (lr / bc1) * m / u."""
    n = param.shape[0]
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    e = real(eps)
    step_size = real(lr / bias_correction1)
    for i in prange(n):
        pi = param[i]
        gi = _grad(grad, grad_acc, i, gs, use_acc)
        if decay:
            gi = gi + wd * pi
        mi = exp_avg[i] + omb1 * (gi - exp_avg[i])
        exp_avg[i] = mi
        ui = b2 * exp_inf[i]
        ai = np.abs(gi) + e
        # max keeping a NaN from either side (a NaN gradient, or a NaN already in exp_inf), as
        # torch.maximum does; bitwise |, a branch-free select that LLVM vectorises
        if (ai > ui) | (ai != ai):
            ui = ai
        exp_inf[i] = ui
        param[i] = pi - step_size * (mi / ui)


adamax = serial_and_parallel(_adamax)
