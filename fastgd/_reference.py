"""The NumPy reference: the readable specification of every update rule, and the test oracle.

Each function here has the same name and signature as the compiled kernels of the Cython and
Numba backends (bottleneck's "slow twin"), updates its arrays in place, and is written to be
read: one NumPy expression per line of the rule as DESIGN.md states it. Scalars that depend on
the step count (bias corrections) are computed by fastgd.functional and passed in.
Arithmetic happens in the arrays' dtype (NumPy keeps float32 with Python-float scalars).
"""
import math

import numpy as np


def read_grad(grad, grad_acc, grad_scale, maximize, use_acc):
    """The gradient every rule sees: g = grad_scale * grad, negated if maximize.

    With use_acc, the last micro-batch's grad is added to the accumulated sum grad_acc as it is
    read, and grad_acc is reset to zero (gradient accumulation fused into the step).
    """
    g = grad * (-grad_scale if maximize else grad_scale)
    if use_acc:
        g = (grad_acc + grad) * (-grad_scale if maximize else grad_scale)
        grad_acc[...] = 0
    return g


def adam(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_scale, maximize, use_acc,
         lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, bias_correction1, bias_correction2):
    """Adam (Kingma & Ba 2015), AdamW (Loshchilov & Hutter 2019) and AMSGrad, as torch.optim.Adam.

    g = read_grad(...)   (grad_scale * grad, negated if maximize; plus grad_acc if use_acc)
    Adam:  g = g + weight_decay * p          AdamW:  p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)            (= beta1 * m + (1 - beta1) * g, torch's lerp form)
    v = beta2 * v + (1 - beta2) * g^2
    AMSGrad: vmax = max(vmax, v), and vmax is used for v below
    p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    if weight_decay != 0 and not decoupled:
        g = g + weight_decay * param
    if decoupled:
        param *= 1 - lr * weight_decay
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    v = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v) * (1 / math.sqrt(bias_correction2)) + eps
    param -= (lr / bias_correction1) * exp_avg / denom


# --- gradient-wide operations (clipping, accumulation): the twins of kernels/norms.pyx ----------

def norm_partial(x, y, use_y, norm_type):
    """The part of a p-norm one array contributes, in float64: sum |v|^p, or max |v| for p = inf.

    v = x + y (in the arrays' dtype) if use_y, else x. The norm of several arrays is
    (sum of their partials)^(1/p) (max for p = inf). The compiled kernels sum in fixed blocks and
    lanes so that the result does not depend on the thread count; here NumPy sums in float64.
    NaN anywhere gives NaN (also for p = inf, as torch).
    """
    v = (x + y) if use_y else x
    a = np.abs(v.astype(np.float64))
    if a.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(np.max(a))
    if norm_type == 2.0:
        return float(np.sum(a * a))
    if norm_type == 1.0:
        return float(np.sum(a))
    return float(np.sum(a ** norm_type))


def scale(x, s):
    """x = s * x (the gradients scaled by the clipping coefficient)."""
    x *= s


def clamp(x, lo, hi):
    """x = min(max(x, lo), hi); NaN stays NaN (torch.clamp)."""
    np.clip(x, lo, hi, out=x)


def accumulate(acc, grad, scale):
    """acc = acc + scale * grad (gradient accumulation over micro-batches)."""
    acc += scale * grad
