"""Lion in Numba: the twin of kernels/lion.pyx, same signature and maths."""
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _lion_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr, beta1, beta2, weight_decay), cast once
    (and ``real`` itself, for sign)."""
    lr, beta1, beta2, weight_decay = s
    gs = real(-grad_scale if maximize else grad_scale)
    step = real(lr)
    decay = real(1.0 - lr * weight_decay)
    b1 = real(beta1)
    omb1 = real(1.0 - beta1)
    b2 = real(beta2)
    omb2 = real(1.0 - beta2)
    return real, gs, step, decay, b1, omb1, b2, omb2


@njit(inline="always", **_OPTIONS)
def _lion_step(i, c, flags, param, grad, grad_acc, exp_avg):
    """Element i of the step (the single kernel's loop body and lion_many's); returns the new
    param value. flags = (use_acc,)."""
    real, gs, step, decay, b1, omb1, b2, omb2 = c
    use_acc, = flags
    gi = _grad(grad, grad_acc, i, gs, use_acc)
    mi = exp_avg[i]
    cc = b1 * mi + omb1 * gi
    # sign(c) as np.sign: 0 at 0, NaN stays NaN
    s = real(cc > 0) - real(cc < 0)
    if cc != cc:
        s = cc
    pi = param[i] * decay - step * s
    param[i] = pi
    exp_avg[i] = b2 * mi + omb2 * gi
    return pi


def _lion(param, grad, grad_acc, exp_avg, grad_scale, maximize, use_acc, lr, beta1, beta2,
          weight_decay, loops):
    """Lion step in place (Chen et al. 2023).

    c = b1 * m + (1 - b1) * g;  p = p * (1 - lr * wd) - lr * sign(c);  m = b2 * m + (1 - b2) * g
    """
    c = _lion_consts(param.dtype.type, grad_scale, maximize, (lr, beta1, beta2, weight_decay))
    return run_loop(loops, flag_index(use_acc), c, (param, grad, grad_acc, exp_avg))


lion = single_kernel(_lion, _lion_consts, _lion_step, 1, 1)


def _lion_flags(use_acc, s):
    return (bool(use_acc),), (() if use_acc else (2,))


lion_many = many_kernel("lion", _lion_consts, _lion_step, 1, _lion_flags)
