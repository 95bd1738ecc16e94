"""Adamax in Numba: the twin of kernels/adamax.pyx, same signature and maths."""
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel
from ._many import many_kernel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _adamax_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr ... bias_correction1), cast once."""
    lr, beta1, beta2, eps, weight_decay, bias_correction1 = s
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    e = real(eps)
    step_size = real(lr / bias_correction1)
    return gs, decay, wd, omb1, b2, e, step_size


@njit(inline="always", **_OPTIONS)
def _adamax_step(i, c, flags, param, grad, grad_acc, exp_avg, exp_inf):
    """Element i of the step (the single kernel's loop body and adamax_many's); returns the
    new param value. flags = (use_acc,)."""
    gs, decay, wd, omb1, b2, e, step_size = c
    use_acc, = flags
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
    pi = pi - step_size * (mi / ui)
    param[i] = pi
    return pi


@njit(inline="always", **_OPTIONS)
def _adamax_loop(param, grad, grad_acc, exp_avg, exp_inf, c, flags):
    for i in prange(param.shape[0]):
        _adamax_step(i, c, flags, param, grad, grad_acc, exp_avg, exp_inf)


def _adamax(param, grad, grad_acc, exp_avg, exp_inf, grad_scale, maximize, use_acc, lr, beta1,
            beta2, eps, weight_decay, bias_correction1):
    """Adamax step in place: g += wd * p;  m += (1 - b1) * (g - m);  u = max(b2 * u, |g| + eps);
    p -= (lr / bc1) * m / u."""
    c = _adamax_consts(param.dtype.type, grad_scale, maximize,
                       (lr, beta1, beta2, eps, weight_decay, bias_correction1))
    # use_acc a literal constant, one loop each: as a runtime flag, with the step inlined, the
    # serial loop outgrows LLVM's unswitching budget and stays scalar (inspect_asm)
    if use_acc:
        _adamax_loop(param, grad, grad_acc, exp_avg, exp_inf, c, (True,))
    else:
        _adamax_loop(param, grad, grad_acc, exp_avg, exp_inf, c, (False,))


adamax = serial_and_parallel(_adamax)


def _adamax_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


adamax_many = many_kernel("adamax", _adamax_consts, _adamax_step, 2, _adamax_flags)
