"""Lion in Numba: the twin of kernels/lion.pyx, same signature and maths."""
from numba import prange

from ._compile import serial_and_parallel
from ._math import _grad


def _lion(param, grad, grad_acc, exp_avg, grad_scale, maximize, use_acc, lr, beta1, beta2,
          weight_decay):
    """Lion step in place (Chen et al. 2023).

    c = b1 * m + (1 - b1) * g;  p = p * (1 - lr * wd) - lr * sign(c);  m = b2 * m + (1 - b2) * g
    """
    n = param.shape[0]
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    step = real(lr)
    decay = real(1.0 - lr * weight_decay)
    b1 = real(beta1)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    omb2 = real(1.0 - beta2)
    for i in prange(n):
        gi = _grad(grad, grad_acc, i, gs, use_acc)
        mi = exp_avg[i]
        c = b1 * mi + omb1 * gi
        # sign(c) as np.sign: 0 at 0, NaN stays NaN
        s = real(c > 0) - real(c < 0)
        if c != c:
            s = c
        param[i] = param[i] * decay - step * s
        exp_avg[i] = b2 * mi + omb2 * gi


lion = serial_and_parallel(_lion)
