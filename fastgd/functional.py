"""Validated, in-place update rules on NumPy arrays (the stateless API, like torch.optim's _functional).

Each function checks every argument (fastgd._validate), derives the step-dependent scalars in
float64, and calls the active backend's kernel. A call that raises has changed nothing.
Arrays may have any shape; they must be C-contiguous, writable, float32/float64, and all of the
parameter's dtype and shape.

Over lists of gradients (torch.nn.utils' clipping): global_norm, clip_grad_norm_,
clip_grad_value_, accumulate_. A list has one dtype; its arrays may have any shapes (empty too).
Norms are deterministic: the same bits at any thread count (kernels/CONTRACT.md).
"""
import math

import numpy as np

from . import _validate as check
from .backends import kernel


def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, max_exp_avg_sq=None,
          maximize=False, grad_scale=1.0):
    """One Adam/AdamW/AMSGrad step in place, as torch.optim.Adam (step t is 1-based).

    g = grad_scale * grad (negated if maximize)
    Adam: g += weight_decay * p;  AdamW (decoupled_weight_decay): p *= 1 - lr * weight_decay
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    amsgrad: vmax = max(vmax, v), used for v below
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """
    t = check.step(step)
    lr = check.nonnegative("lr", lr)
    beta1, beta2 = check.betas(betas)
    eps = check.positive("eps", eps)
    weight_decay = check.nonnegative("weight_decay", weight_decay)
    decoupled = check.flag("decoupled_weight_decay", decoupled_weight_decay)
    amsgrad = check.flag("amsgrad", amsgrad)
    maximize = check.flag("maximize", maximize)
    grad_scale = check.finite("grad_scale", grad_scale)
    p = check.array("param", param)
    g = check.array("grad", grad, like=param, writable=False)
    m = check.array("exp_avg", exp_avg, like=param)
    v = check.array("exp_avg_sq", exp_avg_sq, like=param)
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs max_exp_avg_sq (an array like param, initially zeros)")
        vmax = check.array("max_exp_avg_sq", max_exp_avg_sq, like=param)
    else:
        vmax = v
    check.no_overlap(param=p, grad=g, exp_avg=m, exp_avg_sq=v,
                     max_exp_avg_sq=vmax if amsgrad else None)
    kernel("adam")(p, g, p, m, v, vmax, grad_scale, maximize, False, lr, beta1, beta2, eps,
                   weight_decay, decoupled, amsgrad, 1.0 - beta1 ** t, 1.0 - beta2 ** t)


# --- clipping and accumulation over lists of gradients ------------------------------------------

def _combine(partials, p):
    """The p-norm from per-array partials (kernel norm_partial), summed in list order."""
    if p == math.inf:
        total = 0.0
        for s in partials:
            if s != s:
                return math.nan
            total = max(total, s)
        return total
    total = 0.0
    for s in partials:
        total += s
    if p == 2.0:
        return math.sqrt(total)
    if p == 1.0:
        return total
    return total ** (1.0 / p)


def _total_norm(xs, ys, p):
    """p-norm over all of ``xs`` (flat views), with ``ys[i]`` added to ``xs[i]`` where not None.

    Deterministic: each partial is (see kernels/norms.pyx), and they are added in list order.
    """
    partial = kernel("norm_partial")
    if ys is None:
        return _combine([partial(x, x, False, p) for x in xs], p)
    return _combine([partial(x, x if y is None else y, y is not None, p) for x, y in zip(xs, ys)], p)


def global_norm(grads, norm_type=2.0):
    """The p-norm of all of ``grads`` together, as one vector (a float; NaN/inf if they are).

    ||g||_p = (sum_i sum_j |g_ij|^p)^(1/p);  p = inf: max |g_ij|.  Float32 data is accumulated in
    float64 in a fixed order: the result is the same at any thread count.
    """
    p = check.norm_type(norm_type)
    return _total_norm(check.array_list("grads", grads, writable=False), None, p)


def _clip_coef(total_norm, max_norm):
    """torch's clipping coefficient: min(1, max_norm / (total_norm + 1e-6)) (NaN stays NaN)."""
    coef = max_norm / (total_norm + 1e-6)
    return coef if not coef >= 1.0 else 1.0


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale ``grads`` in place so that their global p-norm is at most ``max_norm``; return the
    norm before clipping, as torch.nn.utils.clip_grad_norm_.

    total = global_norm(grads, norm_type);  coef = min(1, max_norm / (total + 1e-6));  g *= coef
    A non-finite total raises RuntimeError if ``error_if_nonfinite`` (nothing changed), else the
    grads are scaled by the (NaN or 0) coefficient, as torch does. ``max_norm`` must be > 0 (inf
    measures without clipping). The norm pass is deterministic (see global_norm).
    To clip inside an optimizer step without rewriting the gradients, use the optimizers'
    ``max_grad_norm`` option instead.
    """
    max_norm = check.max_norm("max_norm", max_norm)
    p = check.norm_type(norm_type)
    error_if_nonfinite = check.flag("error_if_nonfinite", error_if_nonfinite)
    flats = check.array_list("grads", grads, writable=True)
    total = _total_norm(flats, None, p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {p} for gradients is non-finite ({total}), so "
                           "it cannot be clipped. Set error_if_nonfinite=False to clip anyway.")
    coef = _clip_coef(total, max_norm)
    if coef != 1.0:
        scale = kernel("scale")
        for g in flats:
            scale(g, coef)
    return total


def clip_grad_value_(grads, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value] in place (NaN stays NaN), as
    torch.nn.utils.clip_grad_value_."""
    clip_value = check.nonnegative("clip_value", clip_value)
    clamp = kernel("clamp")
    for g in check.array_list("grads", grads, writable=True):
        clamp(g, -clip_value, clip_value)


def accumulate_(acc, grad, scale=1.0):
    """acc += scale * grad in place (gradient accumulation), for one array or aligned lists.

    Arrays must match in dtype and shape and not share memory; lists are checked whole first.
    """
    scale = check.finite("scale", scale)
    if isinstance(acc, np.ndarray):
        acc, grad = [acc], [grad]
    elif isinstance(grad, np.ndarray):
        raise TypeError("acc is a list but grad is one array; pass aligned lists or two arrays")
    acc, grad = list(acc), list(grad)
    if len(acc) != len(grad):
        raise ValueError(f"got {len(acc)} accumulators for {len(grad)} gradients")
    pairs = []
    for i, (a, g) in enumerate(zip(acc, grad)):
        af = check.array(f"acc[{i}]", a)
        gf = check.array(f"grad[{i}]", g, like=a, writable=False)
        check.no_overlap(acc=af, grad=gf)
        pairs.append((af, gf))
    run = kernel("accumulate")
    for af, gf in pairs:
        run(af, gf, scale)
