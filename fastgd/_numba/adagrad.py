"""Adagrad in Numba: the twin of kernels/adagrad.pyx, same signature and maths."""
import numpy as np
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _adagrad_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: clr, weight_decay, eps), cast once."""
    clr, weight_decay, eps = s
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    step = real(clr)
    e = real(eps)
    return gs, decay, wd, step, e


@njit(inline="always", **_OPTIONS)
def _adagrad_step(i, c, flags, param, grad, grad_acc, state_sum):
    """Element i of the step (the single kernel's loop body and adagrad_many's); returns the
    new param value. flags = (use_acc,)."""
    gs, decay, wd, step, e = c
    use_acc, = flags
    pi = param[i]
    gi = _grad(grad, grad_acc, i, gs, use_acc)
    if decay:
        gi = gi + wd * pi
    si = state_sum[i] + gi * gi
    state_sum[i] = si
    pi = pi - step * (gi / (np.sqrt(si) + e))
    param[i] = pi
    return pi


def _adagrad(param, grad, grad_acc, state_sum, grad_scale, maximize, use_acc, clr, weight_decay,
             eps, loops):
    """Adagrad step in place: g += wd * p;  s += g * g;  p -= clr * g / (sqrt(s) + eps)."""
    c = _adagrad_consts(param.dtype.type, grad_scale, maximize, (clr, weight_decay, eps))
    return run_loop(loops, flag_index(use_acc), c, (param, grad, grad_acc, state_sum))


adagrad = single_kernel(_adagrad, _adagrad_consts, _adagrad_step, 1, 1)


def _adagrad_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


adagrad_many = many_kernel("adagrad", _adagrad_consts, _adagrad_step, 1, _adagrad_flags)
