"""SGD in Numba: the twin of kernels/sgd.pyx, same signature and maths."""
from numba import njit

from ._compile import _OPTIONS
from ._many import many_kernel
from ._single import flag_index, run_loop, single_kernel
from ._math import _grad


@njit(inline="always", **_OPTIONS)
def _sgd_consts(real, grad_scale, maximize, s):
    """The loop's scalars from the kernel's (``s``: lr ... first), cast to ``real`` once."""
    lr, momentum, dampening, weight_decay, nesterov, first = s
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    wd = real(weight_decay)
    mu = real(momentum)
    omd = real(1.0 - dampening)
    step = real(lr)
    return gs, decay, wd, mu, omd, step, nesterov, first


@njit(inline="always", **_OPTIONS)
def _sgd_step(i, c, flags, param, grad, grad_acc, momentum_buffer):
    """Element i of the step (the single kernel's loop body and sgd_many's); returns the new
    param value. flags = (use_acc, use_momentum)."""
    gs, decay, wd, mu, omd, step, nesterov, first = c
    use_acc, use_momentum = flags
    pi = param[i]
    gi = _grad(grad, grad_acc, i, gs, use_acc)
    if decay:
        gi = gi + wd * pi
    if use_momentum:
        if first:
            bi = gi
        else:
            bi = mu * momentum_buffer[i] + omd * gi
        momentum_buffer[i] = bi
        if nesterov:
            gi = gi + mu * bi
        else:
            gi = bi
    pi = pi - step * gi
    param[i] = pi
    return pi


def _sgd(param, grad, grad_acc, momentum_buffer, grad_scale, maximize, use_acc, lr, momentum,
         dampening, weight_decay, nesterov, first, loops):
    """SGD step in place (torch.optim.SGD).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    momentum: buf = g at the first step, else buf = mu * buf + (1 - dampening) * g
              g = g + mu * buf (nesterov) | g = buf
    p -= lr * g
    """
    c = _sgd_consts(param.dtype.type, grad_scale, maximize,
                    (lr, momentum, dampening, weight_decay, nesterov, first))
    return run_loop(loops, flag_index(use_acc, momentum != 0.0), c,
                    (param, grad, grad_acc, momentum_buffer))


sgd = single_kernel(_sgd, _sgd_consts, _sgd_step, 1, 2)


def _sgd_flags(use_acc, s):
    """(use_acc, use_momentum); without them grad_acc (2) and the buffer (3) are left out."""
    use_momentum = s[1] != 0.0
    return (bool(use_acc), use_momentum), (() if use_acc else (2,)) + (() if use_momentum else (3,))


sgd_many = many_kernel("sgd", _sgd_consts, _sgd_step, 1, _sgd_flags)
