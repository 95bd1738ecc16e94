"""Adam / AdamW / AMSGrad in Numba: the twin of kernels/adam.pyx, same signature and maths."""
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel
from ._math import _adam_moments, _grad


@njit(inline="always", **_OPTIONS)
def _adam_loop(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, gs, wd, decay, omb1, b2,
               omb2, e, step_size, rbc2, coupled, use_acc, amsgrad):
    for i in prange(param.shape[0]):
        pi = param[i]
        gi = _grad(grad, grad_acc, i, gs, use_acc)
        if coupled:
            gi = gi + wd * pi
        pi = pi * decay
        mi, vi = _adam_moments(exp_avg, exp_avg_sq, i, gi, omb1, b2, omb2)
        if amsgrad:
            # max(vmax, v) keeping a NaN from either side, as np.maximum does: v NaN fails the
            # compare and stays, a stored NaN is caught by u != u; bitwise |, a branch-free select
            u = max_exp_avg_sq[i]
            if (u > vi) | (u != u):
                vi = u
            max_exp_avg_sq[i] = vi
        d = np.sqrt(vi) * rbc2 + e
        param[i] = pi - step_size * mi / d


def _adam(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_scale, maximize, use_acc,
          lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, bias_correction1, bias_correction2):
    """Adam step in place.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p (Adam) | p *= 1 - lr * wd (AdamW)
    m += (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g;  vmax = max(vmax, v) if amsgrad
    p -= (lr / bc1) * m / (sqrt(v or vmax) / sqrt(bc2) + eps)
    """
    # Scalars are cast to the array's type once, so float32 arrays are computed in float32 (as
    # the reference and torch do) instead of being promoted to float64 element by element.
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    coupled = weight_decay != 0.0 and not decoupled
    wd = real(weight_decay)
    decay = real(1.0 - lr * weight_decay) if decoupled else real(1.0)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    omb2 = real(1.0 - beta2)
    e = real(eps)
    step_size = real(lr / bias_correction1)
    rbc2 = real(1.0 / np.sqrt(bias_correction2))
    # use_acc and amsgrad as literal constants, one loop each: the unused grad_acc/max_exp_avg_sq
    # are stand-ins that alias param/exp_avg_sq, and while the loop still mentions them LLVM's
    # runtime alias check fails and it runs the scalar loop (0.45 of bandwidth instead of 1.0,
    # measured at 16M float32; Cython's gcc unswitches these flags by itself).
    if use_acc:
        if amsgrad:
            _adam_loop(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, gs, wd, decay, omb1,
                       b2, omb2, e, step_size, rbc2, coupled, True, True)
        else:
            _adam_loop(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, gs, wd, decay, omb1,
                       b2, omb2, e, step_size, rbc2, coupled, True, False)
    elif amsgrad:
        _adam_loop(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, gs, wd, decay, omb1,
                   b2, omb2, e, step_size, rbc2, coupled, False, True)
    else:
        _adam_loop(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, gs, wd, decay, omb1,
                   b2, omb2, e, step_size, rbc2, coupled, False, False)


adam = serial_and_parallel(_adam)
