"""Adam / AdamW / AMSGrad in Numba: the twin of kernels/adam.pyx, same signature and maths."""
import numpy as np
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
from ._math import _adam_moments, _grad


@njit(inline="always", **_OPTIONS)
def _adam_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr ... bias_correction2), cast to the computing type ``real`` once, so float32 arrays are
    computed in float32 (as the reference and torch do) instead of being promoted to float64
    element by element."""
    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, bias_correction1, bias_correction2 = s
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
    return gs, wd, decay, omb1, b2, omb2, e, step_size, rbc2, coupled


@njit(inline="always", **_OPTIONS)
def _adam_step(i, c, flags, param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq):
    """Element i of the step (the single kernel's loop body and adam_many's): updates every
    array (NumPy arrays or _views.View) at i, returns the new param value. flags = (use_acc,
    amsgrad), literal constants."""
    gs, wd, decay, omb1, b2, omb2, e, step_size, rbc2, coupled = c
    use_acc, amsgrad = flags
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
    pi = pi - step_size * mi / d
    param[i] = pi
    return pi


def _adam(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_scale, maximize, use_acc,
          lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, bias_correction1, bias_correction2,
          loops):
    """Adam step in place.

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p (Adam) | p *= 1 - lr * wd (AdamW)
    m += (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g;  vmax = max(vmax, v) if amsgrad
    p -= (lr / bc1) * m / (sqrt(v or vmax) / sqrt(bc2) + eps)
    """
    c = _adam_consts(param.dtype.type, grad_scale, maximize, (lr, beta1, beta2, eps, weight_decay,
                     decoupled, amsgrad, bias_correction1, bias_correction2))
    return run_loop(loops, flag_index(use_acc, amsgrad), c,
                    (param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq))


adam = single_kernel(_adam, _adam_consts, _adam_step, 3, 2)


def _adam_flags(use_acc, s):
    """(use_acc, amsgrad) and the roles left out: grad_acc (2) without use_acc, vmax (5)
    without amsgrad."""
    amsgrad = bool(s[6])
    return (bool(use_acc), amsgrad), (() if use_acc else (2,)) + (() if amsgrad else (5,))


adam_many = many_kernel("adam", _adam_consts, _adam_step, 3, _adam_flags)
