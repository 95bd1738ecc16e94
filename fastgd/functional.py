"""Validated, in-place update rules on NumPy arrays (the stateless API, like torch.optim's _functional).

Each rule function (``adam_``, ``sgd_``, ``adagrad_``, ``rmsprop_``, ``adamax_``, ``nadam_``,
``radam_``, ``lion_``) is made from its rule's spec (fastgd/rules/): its signature (the state
arrays, then ``step`` where the rule uses it, the scalar state, and the options with their
defaults), its checks and its kernel call. A call checks every argument, derives the
step-dependent scalars in float64 and calls the active backend's kernel; a call that raises has
changed nothing. Arrays may have any shape; they must be C-contiguous, writable,
float32/float64, and all of the parameter's dtype and shape, and must not share memory.

Over lists of gradients (torch.nn.utils' clipping): global_norm, clip_grad_norm_,
clip_grad_value_, accumulate_. A list has one dtype; its arrays may have any shapes (empty too).
Norms are deterministic: the same bits at any thread count (kernels/CONTRACT.md).
"""
import inspect
import math
import operator

import numpy as np

from . import _validate as check
from .backends import kernel
from .clipping import coefficient as _clip_coef
from .clipping import total_norm as _total_norm
from .rules import SPECS
from .rules.nadam import coefficients as nadam_coefficients  # noqa: F401  (step scalars, public)
from .rules.radam import rectification as radam_rectification  # noqa: F401

_P = inspect.Parameter
_MISSING = object()


def _rule_function(spec, name):
    """The functional form of ``spec``: ``name(param, grad, *state, step=, *scalar_state,
    **options, grad_scale=1.0, **optional state)``, returning the new scalar state (NAdam's mu_product) if any.

    The signature is built from the spec, so Python-level binding errors read as usual; the
    body binds by hand (inspect's binding costs more than the kernel on 1,000 elements) and
    checks only the options given (the defaults were checked once, here).
    """
    always = [s.argument for s in spec.state if s.when is None]
    optional = [s.argument for s in spec.state if s.when is not None]
    # arrays an option switches on are keyword-only (amsgrad's max_exp_avg_sq), except where
    # the rule has no other state (SGD's momentum_buffer, positional as in torch's functional)
    optional_positional = optional if not always else []
    positional = ["param", "grad", *always, *optional_positional]
    takes_step = spec.scalars is not None
    scalar_names = [n for n, _, _ in spec.scalar_state]
    params = [_P(n, _P.POSITIONAL_OR_KEYWORD) for n in ["param", "grad", *always]]
    params += [_P(n, _P.POSITIONAL_OR_KEYWORD, default=None) for n in optional_positional]
    params += [_P(n, _P.KEYWORD_ONLY) for n in (["step"] if takes_step else []) + scalar_names]
    params += [_P(n, _P.KEYWORD_ONLY, default=d) for n, d in spec.options]
    params += [_P(n, _P.KEYWORD_ONLY, default=None) for n in optional if n not in positional]
    params.append(_P("grad_scale", _P.KEYWORD_ONLY, default=1.0))
    signature = inspect.Signature(params)
    allowed = frozenset(signature.parameters)
    required = frozenset(n for n, q in signature.parameters.items() if q.default is q.empty)
    # for a call with n positional arguments: the names it binds, and the required ones left
    bound_by = [frozenset(positional[:n]) for n in range(len(positional) + 1)]
    missing_after = [required - bound_by[n] for n in range(len(positional) + 1)]
    defaults = spec.check_options(spec.defaults)
    option_names = tuple(n for n, _ in spec.options)
    scalar_checks = [(n, c) for n, _, c in spec.scalar_state]
    needs = [(s.argument, s) for s in spec.state if s.when is not None]
    missing = (_MISSING,) * len(option_names)
    # (options given, checked options, kernel constants, {optional array: needed}) of the last call
    cache = [(list(missing), defaults, spec.constants(defaults), {n: st.needed(defaults) for n, st in needs})]
    array_names = ("param", "grad", *always)
    n_arrays = len(array_names)
    # the kernel's arrays are named by the state's names (spec.arrays reads them)
    state_name = {s.argument: s.name for s in spec.state}

    def rule(*args, **kwargs):
        keys = kwargs.keys()
        n = len(args)
        if (n > len(positional) or not keys <= allowed or not keys.isdisjoint(bound_by[n])
                or not keys >= missing_after[n]):
            signature.bind(*args, **kwargs)          # raises Python's own TypeError
        if n == n_arrays:      # the usual call: the arrays positional, the rest by keyword
            values = kwargs
            arrays = list(args)
        else:
            values = dict(zip(positional, args))
            values.update(kwargs)
            arrays = [values[n] for n in array_names]
        # in the signature's order (step, scalar state, options), then the arrays: the first
        # bad argument is named
        t = check.step(values["step"]) if takes_step else None
        sc = {n: c(n, values[n]) for n, c in scalar_checks} if scalar_checks else None
        # options: the last call's checked values are reused when every option is the same
        # object as then (a training loop passes the same floats each step)
        given = list(map(kwargs.get, option_names, missing))
        last_given, o, constants, needed = cache[0]
        if not all(map(operator.is_, given, last_given)):
            o = dict(defaults)
            for key, value in zip(option_names, given):
                if value is not _MISSING:
                    o[key] = spec.check_option(key, value)
            if spec.cross_check is not None:
                spec.cross_check(o)
            constants = spec.constants(o)
            needed = {n: st.needed(o) for n, st in needs}
            cache[0] = (given, o, constants, needed)
        grad_scale = values.get("grad_scale", 1.0)
        if type(grad_scale) is not float or grad_scale != 1.0:
            grad_scale = check.finite("grad_scale", grad_scale)
        param = arrays[0]
        names = list(array_names)
        unused = []
        for n, st in needs:
            a = values.get(n)
            if a is not None:
                if needed[n]:
                    arrays.append(a)
                    names.append(n)
                else:   # passed though these options do not use it: still an array like param
                    unused.append((n, a))
            elif needed[n]:
                raise ValueError(f"{st.describe(o)} needs {n} (an array like param, initially zeros)")
        if check.valid(tuple(arrays), 1):     # all good at once (~0.1 us); else the checks name it
            if param.ndim != 1:
                arrays = [a.reshape(-1) for a in arrays]
            p, g = arrays[0], arrays[1]
        else:
            p, g = _checked_arrays(arrays, names)
        for n, a in unused:
            check.array(n, a, like=param)
        s = {"param": p}
        for n, a in zip(names[2:], arrays[2:]):
            s[state_name[n]] = a
        scalars = spec.scalars(o, t, sc, t == 1) if takes_step else ()
        kernel(spec.name)(p, g, p, *spec.arrays(s), grad_scale, o["maximize"], False,
                          *constants, *scalars)
        if scalar_names:
            return sc[scalar_names[0]] if len(scalar_names) == 1 else tuple(sc[n] for n in scalar_names)
        return None

    rule.__name__ = rule.__qualname__ = name
    rule.__module__ = __name__
    rule.__signature__ = signature
    title = {"adam": "One Adam/AdamW/AMSGrad step", "nadam": "One NAdam step"}.get(
        spec.name, f"One {spec.name} step")
    rule.__doc__ = (f"{title} in place, from fastgd/rules/{spec.name}.py (t = step, 1-based):\n\n"
                    + "\n".join("    " + line for line in spec.doc.splitlines())
                    + ("\n\nReturns the new " + ", ".join(scalar_names) + "; pass it to the next step."
                       if scalar_names else "")
                    + ("\n\nState arrays the options switch on (" + ", ".join(optional)
                       + ") are required when they are on." if optional else ""))
    return rule


def _checked_arrays(arrays, names):
    """The arrays of a rule call checked one by one (the fast check said no): flat views, or the
    error naming the first bad one. The first is the parameter, the second the (read-only)
    gradient; no two may share memory."""
    param = arrays[0]
    flat = [check.array(names[0], param), check.array(names[1], arrays[1], like=param, writable=False)]
    flat += [check.array(n, a, like=param) for n, a in zip(names[2:], arrays[2:])]
    spans = []
    for n, a in zip(names, flat):
        lo, hi = check.span(a)
        for other, (x, y) in spans:
            if lo < y and x < hi:
                raise ValueError(f"{n} and {other} share memory; each must be its own array")
        spans.append((n, (lo, hi)))
    arrays[:] = flat
    return flat[0], flat[1]


adam_ = _rule_function(SPECS["adam"], "adam_")
sgd_ = _rule_function(SPECS["sgd"], "sgd_")
adagrad_ = _rule_function(SPECS["adagrad"], "adagrad_")
rmsprop_ = _rule_function(SPECS["rmsprop"], "rmsprop_")
adamax_ = _rule_function(SPECS["adamax"], "adamax_")
nadam_ = _rule_function(SPECS["nadam"], "nadam_")
radam_ = _rule_function(SPECS["radam"], "radam_")
lion_ = _rule_function(SPECS["lion"], "lion_")


def adagrad_lr(step, lr, lr_decay):
    """Adagrad's decayed learning rate at step t (1-based): lr / (1 + (t - 1) * lr_decay)."""
    return lr / (1.0 + (step - 1) * lr_decay)


# --- clipping and accumulation over lists of gradients ------------------------------------------

def global_norm(grads, norm_type=2.0):
    """The p-norm of all of ``grads`` together, as one vector (a float; NaN/inf if they are).

    ||g||_p = (sum_i sum_j |g_ij|^p)^(1/p);  p = inf: max |g_ij|.  Float32 data is accumulated in
    float64 in a fixed order: the result is the same at any thread count.
    """
    p = check.norm_type(norm_type)
    return _total_norm(check.array_list("grads", grads, writable=False), None, p)


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


