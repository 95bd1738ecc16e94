"""Adagrad in Numba: the twin of kernels/adagrad.pyx, same signature and maths."""
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel
from ._many import many_kernel
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


@njit(inline="always", **_OPTIONS)
def _adagrad_loop(param, grad, grad_acc, state_sum, c, flags):
    for i in prange(param.shape[0]):
        _adagrad_step(i, c, flags, param, grad, grad_acc, state_sum)


def _adagrad(param, grad, grad_acc, state_sum, grad_scale, maximize, use_acc, clr, weight_decay,
             eps):
    """Adagrad step in place: g += wd * p;  s += g * g;  p -= clr * g / (sqrt(s) + eps)."""
    c = _adagrad_consts(param.dtype.type, grad_scale, maximize, (clr, weight_decay, eps))
    # use_acc a literal constant, one loop each: as a runtime flag, with the step inlined, the
    # serial loop outgrows LLVM's unswitching budget and stays scalar (inspect_asm)
    if use_acc:
        _adagrad_loop(param, grad, grad_acc, state_sum, c, (True,))
    else:
        _adagrad_loop(param, grad, grad_acc, state_sum, c, (False,))


adagrad = serial_and_parallel(_adagrad)


def _adagrad_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


adagrad_many = many_kernel("adagrad", _adagrad_consts, _adagrad_step, 1, _adagrad_flags)
