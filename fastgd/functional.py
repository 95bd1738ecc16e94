"""Validated, in-place update rules on NumPy arrays (the stateless API, like torch.optim's _functional).

Each function checks every argument (fastgd._validate; the options by its table OPTION_CHECKS,
as the optimizers check them), derives the step-dependent scalars in float64, and calls the
active backend's kernel. A call that raises has changed nothing.
Arrays may have any shape; they must be C-contiguous, writable, float32/float64, and all of the
parameter's dtype and shape.

Over lists of gradients (torch.nn.utils' clipping): global_norm, clip_grad_norm_,
clip_grad_value_, accumulate_. A list has one dtype; its arrays may have any shapes (empty too).
Norms are deterministic: the same bits at any thread count (kernels/CONTRACT.md).
"""
import functools
import inspect
import math

import numpy as np

from . import _validate as check
from .backends import kernel

#: The checks of a rule's keyword arguments: its options, and its step counters.
_KEYWORD_CHECKS = {**check.OPTION_CHECKS,
                   "step": lambda name, value: check.step(value),
                   "mu_product": check.fraction}


def _checks_keywords(rule):
    """Check ``rule``'s keyword-only arguments by _KEYWORD_CHECKS before its body runs.

    They are checked in the signature's order (the first bad one is reported), before any array
    is looked at, and the body gets them normalised (floats, bools, betas as a pair of floats,
    step as an int); a default is used as written. A call that does not fit the signature is
    passed straight through, so Python's own TypeError comes first, as without the checks.
    """
    params = inspect.signature(rule).parameters.values()
    checks = [(q.name, _KEYWORD_CHECKS[q.name]) for q in params
              if q.kind is q.KEYWORD_ONLY and q.name in _KEYWORD_CHECKS]
    names = [q.name for q in params]
    positional = [q.name for q in params if q.kind is q.POSITIONAL_OR_KEYWORD]
    n_required = sum(q.kind is q.POSITIONAL_OR_KEYWORD and q.default is q.empty for q in params)
    required = frozenset(q.name for q in params if q.kind is q.KEYWORD_ONLY and q.default is q.empty)
    # keywords[n]: the names a call with n positional arguments may pass as keywords
    keywords = [frozenset(names) - frozenset(positional[:n]) for n in range(len(positional) + 1)]

    @functools.wraps(rule)
    def checked(*args, **kwargs):
        # Only a call Python can bind is checked here; any other raises Python's TypeError when
        # the rule is called, before anything else, as it did without this wrapper.
        n, keys = len(args), kwargs.keys()
        if (n < len(keywords) and keys <= keywords[n] and keys >= required
                and (n >= n_required or all(name in keys for name in positional[n:n_required]))):
            for name, check_one in checks:
                if name in kwargs:
                    kwargs[name] = check_one(name, kwargs[name])
        return rule(*args, **kwargs)
    return checked


@_checks_keywords
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
    beta1, beta2 = betas
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
                   weight_decay, decoupled_weight_decay, amsgrad, 1.0 - beta1 ** step,
                   1.0 - beta2 ** step)


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
    try:
        return total ** (1.0 / p)
    except OverflowError:   # a finite sum whose root overflows (p < 1): the norm is inf, as in
        return math.inf     # torch (float ** raises where the array operation gives inf)


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


def _needed(name, a, param, why):
    """A state array an option requires: refuse None with a message saying which option needs it."""
    if a is None:
        raise ValueError(f"{why} needs {name} (an array like param, initially zeros)")
    return check.array(name, a, like=param)


@_checks_keywords
def sgd_(param, grad, momentum_buffer=None, *, step, lr=1e-3, momentum=0.0, dampening=0.0,
         weight_decay=0.0, nesterov=False, maximize=False, grad_scale=1.0):
    """One SGD step in place, as torch.optim.SGD (step t is 1-based).

    g = grad_scale * grad (negated if maximize);  g += weight_decay * p
    momentum > 0: buf = g at t == 1, else buf = momentum * buf + (1 - dampening) * g
                  g = g + momentum * buf (nesterov) | g = buf
    p -= lr * g
    momentum_buffer (an array like param; its contents are overwritten at t == 1) is required
    when momentum > 0. nesterov needs momentum > 0 and dampening == 0.
    """
    check.nesterov_momentum(nesterov, momentum, dampening)
    p = check.array("param", param)
    g = check.array("grad", grad, like=param, writable=False)
    if momentum > 0.0:
        buf = _needed("momentum_buffer", momentum_buffer, param, f"momentum={momentum}")
    else:
        buf = None if momentum_buffer is None else check.array("momentum_buffer", momentum_buffer,
                                                               like=param)
    check.no_overlap(param=p, grad=g, momentum_buffer=buf)
    kernel("sgd")(p, g, p, p if buf is None else buf, grad_scale, maximize, False, lr, momentum,
                  dampening, weight_decay, nesterov, step == 1)


@_checks_keywords
def adagrad_(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, grad_scale=1.0):
    """One Adagrad step in place, as torch.optim.Adagrad (step t is 1-based).

    g = grad_scale * grad (negated if maximize);  g += weight_decay * p
    s += g^2;  p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
    """
    p, g, s = check.step_arrays(param, grad, state_sum=state_sum)
    kernel("adagrad")(p, g, p, s, grad_scale, maximize, False, adagrad_lr(step, lr, lr_decay),
                      weight_decay, eps)


def adagrad_lr(step, lr, lr_decay):
    """Adagrad's decayed learning rate at step t (1-based): lr / (1 + (t - 1) * lr_decay)."""
    return lr / (1.0 + (step - 1) * lr_decay)


@_checks_keywords
def rmsprop_(param, grad, square_avg, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
             momentum=0.0, centered=False, momentum_buffer=None, grad_avg=None, maximize=False,
             grad_scale=1.0):
    """One RMSprop step in place, as torch.optim.RMSprop.

    g = grad_scale * grad (negated if maximize);  g += weight_decay * p
    sq = alpha * sq + (1 - alpha) * g^2
    centered: ga = alpha * ga + (1 - alpha) * g;  d = sqrt(sq - ga^2) + eps;  else d = sqrt(sq) + eps
    momentum > 0: buf = momentum * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
    momentum_buffer is required when momentum > 0, grad_avg when centered (arrays like param,
    initially zeros).
    """
    p = check.array("param", param)
    g = check.array("grad", grad, like=param, writable=False)
    sq = check.array("square_avg", square_avg, like=param)
    buf = _needed("momentum_buffer", momentum_buffer, param, f"momentum={momentum}") \
        if momentum > 0.0 else None
    ga = _needed("grad_avg", grad_avg, param, "centered=True") if centered else None
    check.no_overlap(param=p, grad=g, square_avg=sq, momentum_buffer=buf, grad_avg=ga)
    kernel("rmsprop")(p, g, p, sq, sq if buf is None else buf, sq if ga is None else ga, grad_scale,
                      maximize, False, lr, alpha, eps, weight_decay, momentum, centered)


@_checks_keywords
def adamax_(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
            weight_decay=0.0, maximize=False, grad_scale=1.0):
    """One Adamax step in place, as torch.optim.Adamax (step t is 1-based).

    g = grad_scale * grad (negated if maximize);  g += weight_decay * p
    m = beta1 * m + (1 - beta1) * g;  u = max(beta2 * u, |g| + eps)
    p -= lr / (1 - beta1^t) * m / u
    """
    beta1, beta2 = betas
    p, g, m, u = check.step_arrays(param, grad, exp_avg=exp_avg, exp_inf=exp_inf)
    kernel("adamax")(p, g, p, m, u, grad_scale, maximize, False, lr, beta1, beta2, eps,
                     weight_decay, 1.0 - beta1 ** step)


def nadam_coefficients(step, mu_product, lr, beta1, momentum_decay):
    """NAdam's step scalars in float64: (grad_coef, avg_coef, new mu_product).

    mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  mu_product' = mu_product * mu_t
    grad_coef = lr * (1 - mu_t) / (1 - mu_product');  avg_coef = lr * mu_{t+1} / (1 - mu_product' * mu_{t+1})
    """
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = mu_product * mu
    return (lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product * mu_next),
            mu_product)


@_checks_keywords
def nadam_(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr=2e-3, betas=(0.9, 0.999),
           eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
           maximize=False, grad_scale=1.0):
    """One NAdam step in place, as torch.optim.NAdam (step t is 1-based); returns the new mu_product.

    mu_product: the product mu_1 ... mu_{t-1} (1.0 at the first step); pass the returned value
    to the next step. With mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)):
    g = grad_scale * grad (negated if maximize)
    NAdam: g += weight_decay * p;  decoupled_weight_decay (NAdamW): p *= 1 - lr * weight_decay
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2;  d = sqrt(v / (1 - beta2^t)) + eps
    p -= lr * (1 - mu_t) / (1 - mu_1..mu_t) * g / d + lr * mu_{t+1} / (1 - mu_1..mu_{t+1}) * m / d
    """
    beta1, beta2 = betas
    p, g, m, v = check.step_arrays(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    grad_coef, avg_coef, mu_product = nadam_coefficients(step, mu_product, lr, beta1, momentum_decay)
    kernel("nadam")(p, g, p, m, v, grad_scale, maximize, False, lr, beta1, beta2, eps, weight_decay,
                    decoupled_weight_decay, grad_coef, avg_coef, 1.0 - beta2 ** step)
    return mu_product


def radam_rectification(step, beta2):
    """RAdam's variance rectification at step t: (adaptive, rect).

    rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    adaptive = rho_t > 5;  rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    """
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / (1.0 - beta2 ** step)
    if rho_t <= 5.0:
        return False, 1.0
    rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
    return True, rect


@_checks_keywords
def radam_(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=0.0, decoupled_weight_decay=False, maximize=False, grad_scale=1.0):
    """One RAdam step in place, as torch.optim.RAdam (step t is 1-based).

    g = grad_scale * grad (negated if maximize)
    RAdam: g += weight_decay * p;  decoupled_weight_decay (RAdamW): p *= 1 - lr * weight_decay
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    rho_t > 5: p -= lr * rect_t * m / (1 - beta1^t) * sqrt(1 - beta2^t) / (sqrt(v) + eps)
    else:      p -= lr * m / (1 - beta1^t)            (radam_rectification gives rho_t, rect_t)
    """
    beta1, beta2 = betas
    p, g, m, v = check.step_arrays(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    adaptive, rect = radam_rectification(step, beta2)
    kernel("radam")(p, g, p, m, v, grad_scale, maximize, False, lr, beta1, beta2, eps, weight_decay,
                    decoupled_weight_decay, 1.0 - beta1 ** step, 1.0 - beta2 ** step, adaptive,
                    rect)


@_checks_keywords
def lion_(param, grad, exp_avg, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False,
          grad_scale=1.0):
    """One Lion step in place (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    g = grad_scale * grad (negated if maximize)
    c = beta1 * m + (1 - beta1) * g;  p = p * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g
    Note: Lion's useful lr is 3-10x smaller than AdamW's and its weight_decay 3-10x larger (the
    paper's advice), since every coordinate moves by exactly lr.
    """
    beta1, beta2 = betas
    p, g, m = check.step_arrays(param, grad, exp_avg=exp_avg)
    kernel("lion")(p, g, p, m, grad_scale, maximize, False, lr, beta1, beta2, weight_decay)
