"""SGD in Numba: the twin of kernels/sgd.pyx, same signature and maths."""
from numba import prange

from ._compile import serial_and_parallel
from ._math import _grad


def _sgd(param, grad, grad_acc, momentum_buffer, grad_scale, maximize, use_acc, lr, momentum,
         dampening, weight_decay, nesterov, first):
    """SGD step in place (torch.optim.SGD).

    g = gs * grad  (gs = grad_scale, negated if maximize; with use_acc: gs * (acc + grad), acc = 0)
    g += wd * p
    momentum: buf = g at the first step, else buf = mu * buf + (1 - dampening) * g
              g = g + mu * buf (nesterov) | g = buf
    p -= lr * g
    """
    n = param.shape[0]
    real = param.dtype.type
    gs = real(-grad_scale if maximize else grad_scale)
    decay = weight_decay != 0.0
    use_momentum = momentum != 0.0
    wd = real(weight_decay)
    mu = real(momentum)
    omd = real(1.0 - dampening)
    step = real(lr)
    for i in prange(n):
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
        param[i] = pi - step * gi


sgd = serial_and_parallel(_sgd)
