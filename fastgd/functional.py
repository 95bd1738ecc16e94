"""Validated, in-place update rules on NumPy arrays (the stateless API, like torch.optim's _functional).

Each function checks every argument (fastgd._validate), derives the step-dependent scalars in
float64, and calls the active backend's kernel. A call that raises has changed nothing.
Arrays may have any shape; they must be C-contiguous, writable, float32/float64, and all of the
parameter's dtype and shape.
"""
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
