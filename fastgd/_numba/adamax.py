"""Adamax in Numba: the twin of kernels/adamax.pyx, same signature and maths."""
import numpy as np
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
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


def _adamax(param, grad, grad_acc, exp_avg, exp_inf, grad_scale, maximize, use_acc, lr, beta1,
            beta2, eps, weight_decay, bias_correction1, loops):
    """Adamax step in place: g += wd * p;  m += (1 - b1) * (g - m);  u = max(b2 * u, |g| + eps);
    p -= (lr / bc1) * m / u."""
    c = _adamax_consts(param.dtype.type, grad_scale, maximize,
                       (lr, beta1, beta2, eps, weight_decay, bias_correction1))
    return run_loop(loops, flag_index(use_acc), c, (param, grad, grad_acc, exp_avg, exp_inf))


adamax = single_kernel(_adamax, _adamax_consts, _adamax_step, 2, 1)


def _adamax_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


adamax_many = many_kernel("adamax", _adamax_consts, _adamax_step, 2, _adamax_flags)
