"""RAdam in Numba: the twin of kernels/radam.pyx, same signature and maths."""
import numpy as np
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
from ._math import _adam_moments


@njit(inline="always", **_OPTIONS)
def _radam_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr ... rect), cast once."""
    lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2, adaptive, \
        rect = s
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
    return gs, coupled, wd, decay, omb1, b2, omb2, e, step_size, adaptive


@njit(inline="always", **_OPTIONS)
def _radam_step(i, c, flags, param, grad, grad_acc, exp_avg, exp_avg_sq):
    """Element i of the step (the single kernel's loop body and radam_many's); returns the new
    param value. flags = (use_acc,)."""
    gs, coupled, wd, decay, omb1, b2, omb2, e, step_size, adaptive = c
    use_acc, = flags
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
        pi = pi - step_size * mi / (np.sqrt(vi) + e)
    else:
        pi = pi - step_size * mi
    param[i] = pi
    return pi


def _radam(param, grad, grad_acc, exp_avg, exp_avg_sq, grad_scale, maximize, use_acc, lr, beta1,
           beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2, adaptive, rect,
           loops):
    """RAdam step in place: g += wd * p | p *= 1 - lr * wd;  m, v as Adam;
    adaptive: p -= (lr * rect * sqrt(bc2) / bc1) * m / (sqrt(v) + eps), else p -= (lr / bc1) * m."""
    c = _radam_consts(param.dtype.type, grad_scale, maximize,
                      (lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                       bias_correction2, adaptive, rect))
    return run_loop(loops, flag_index(use_acc), c, (param, grad, grad_acc, exp_avg, exp_avg_sq))


radam = single_kernel(_radam, _radam_consts, _radam_step, 2, 1)


def _radam_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


radam_many = many_kernel("radam", _radam_consts, _radam_step, 2, _radam_flags)
