"""The fuzzer behind tests/test_fuzz.py (run in a subprocess, so a crash cannot kill pytest).

Targets are discovered, not listed: every public function of ``fastgd.functional`` whose name
ends in ``_`` (adam_, and sgd_, clip_grad_norm_, accumulate_, ... as they land) and every rule
of ``fastgd.rules.RULES``. Arguments are built from each function's signature: positional
parameters without a default are arrays (the first is the parameter), keyword arguments
defaulting to None are optional arrays, the rest are hyperparameters drawn around their
defaults. A target whose arguments this cannot guess gets an entry in ``ARGUMENTS``.

Each example is run twice, on copies: with the backend under test and with the NumPy reference
(the same public function, backend 'numpy'). Outcomes must agree: both refuse with the same
TypeError/ValueError and leave every input unchanged, or both succeed with the same arrays
(NaN where the reference has NaN, the same infinities, finite values within a tolerance scaled
by the magnitudes involved, since the compiled kernels may fuse multiply-adds). Both sides pass
through fastgd's one validation layer, so whether to refuse is also checked against an oracle
written here from the documented rules (``functional_outcome``, ``valid_options``,
``step_outcome``): a call must refuse exactly what they call invalid.
"""
import inspect
import json
import math
import os
import sys

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import fastgd
from fastgd import functional
from fastgd.rules import RULES

EXAMPLES = int(os.environ.get("FASTGD_FUZZ_EXAMPLES", "80"))
SEED = int(os.environ.get("FASTGD_FUZZ_SEED", "0"))
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

# Lengths: empty, tiny, odd, and one above the parallel threshold (32768).
LENGTHS = (0, 1, 2, 7, 33, 1023, 40_000)
SPECIALS = {
    np.dtype(np.float32): (0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.2e-38, 1e30, -1e30, 3e38,
                           np.nan, np.inf, -np.inf),
    np.dtype(np.float64): (0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.3e-308, 1e30, -1e30, 1e300,
                           np.nan, np.inf, -np.inf),
}
BAD_DTYPES = (np.float16, np.int32, np.int64, np.complex64, np.bool_, ">f8", ">f4", object)
WILD = (0, -1, -1e-3, 1.5, 1e30, -1e30, math.nan, math.inf, -math.inf, True, None, "1", 10**40)

# No shrinking by default: it can take minutes on arrays this size; the failure is reported as
# drawn (set FASTGD_FUZZ_SHRINK=1 to minimise it when debugging).
PHASES = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if os.environ.get("FASTGD_FUZZ_SHRINK") else ())

# Targets whose arguments the signature does not tell: name -> callable(draw) -> (args, kwargs).
# Filled below (after the strategies): the functions over lists of gradients.
ARGUMENTS = {}


# Known, documented differences from the reference: name -> [(predicate(args, kwargs), why)].
# Such cases must still agree on refusing or not, never crash, and leave refused inputs
# unchanged; their values are not compared. Each entry is a bug to fix in the kernels.
# (None now: AMSGrad's max dropping a NaN stored in max_exp_avg_sq was the last, fixed with a
# NaN-keeping select that still vectorises.)
KNOWN_DIVERGENCES = {}


# --- values ---------------------------------------------------------------------------------

@st.composite
def values(draw, n, dtype):
    """n values of dtype: random normals at a drawn scale, sprinkled with special values."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e-30, 1e30]))
    a = (rng.standard_normal(n) * scale).astype(dtype)
    if n and draw(st.booleans()):
        specials = draw(st.lists(st.sampled_from(SPECIALS[dtype]), min_size=1, max_size=4))
        where = rng.integers(0, n, size=min(n, draw(st.integers(1, 64))))
        a[where] = rng.choice(np.array(specials, dtype=dtype), size=where.size)
    if n and draw(st.integers(0, 9)) == 0:                 # all of one special value
        a[:] = draw(st.sampled_from(SPECIALS[dtype]))
    return a


@st.composite
def shapes(draw):
    n = draw(st.sampled_from(LENGTHS))
    kind = draw(st.sampled_from(["1d", "1d", "2d", "0d"]))
    if kind == "0d":
        return ()
    if kind == "2d" and n > 1:
        rows = draw(st.sampled_from([d for d in (1, 2, 3, 5, 8) if n % d == 0] or [1]))
        return (rows, n // rows)
    return (n,)


MUTATIONS = ("bad_dtype", "noncontiguous", "fortran", "readonly", "wrong_shape", "list",
             "alias_same", "alias_overlap", "scalar")


def mutate(draw, arrays, i):
    """Make arrays[i] wrong in one drawn way; returns the mutation's name."""
    a = arrays[i]
    how = draw(st.sampled_from(MUTATIONS))
    if how == "bad_dtype":
        arrays[i] = a.astype(draw(st.sampled_from(BAD_DTYPES)))
    elif how == "noncontiguous" and a.size:
        base = np.repeat(a.reshape(-1), 2)
        arrays[i] = base[::2].reshape(a.shape)
    elif how == "fortran" and a.ndim == 2 and min(a.shape) > 1:
        arrays[i] = np.asfortranarray(a)
    elif how == "readonly":
        a.setflags(write=False)
    elif how == "wrong_shape":
        arrays[i] = np.concatenate([a.reshape(-1), a.reshape(-1)[:1] if a.size else np.ones(1, a.dtype)])
    elif how == "list":
        arrays[i] = a.tolist()
    elif how in ("alias_same", "alias_overlap") and len(arrays) > 1:
        j = draw(st.sampled_from([k for k in range(len(arrays)) if k != i]))
        if how == "alias_same" or arrays[j].size < 2:
            arrays[i] = arrays[j]
        else:   # a same-shaped view overlapping arrays[j] by all but one element
            flat = np.concatenate([arrays[j].reshape(-1), arrays[j].reshape(-1)[:1]])
            arrays[j] = flat[:-1].reshape(arrays[j].shape)
            arrays[i] = flat[1:].reshape(arrays[j].shape)
    elif how == "scalar":
        arrays[i] = 1.0
    return how


def array_list(draw, dtype, count=None, shapes_=None):
    """A list of 0-3 arrays of one dtype and any shapes (as clip_grad_norm_ takes), sometimes
    with one entry made wrong (``mutate``: a bad dtype, read-only, aliased, ...) or None."""
    if shapes_ is None:
        shapes_ = [draw(shapes()) for _ in range(draw(st.integers(0, 3)) if count is None else count)]
    arrays = [draw(values(int(np.prod(s)), dtype)).reshape(s) for s in shapes_]
    if arrays and draw(st.integers(0, 4)) == 0:
        mutate(draw, arrays, draw(st.integers(0, len(arrays) - 1)))
    elif arrays and draw(st.integers(0, 9)) == 0:
        arrays[draw(st.integers(0, len(arrays) - 1))] = None
    return arrays, shapes_


def _grads_arg(draw):
    """The ``grads`` argument: a list, sometimes a tuple, one bare array, or not arrays at all."""
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    arrays, _ = array_list(draw, dtype)
    how = draw(st.integers(0, 19))
    if how == 0:
        return tuple(arrays)
    if how == 1:
        return draw(values(draw(st.sampled_from(LENGTHS)), dtype))
    if how == 2:
        return draw(st.sampled_from([None, 1.0, "grads"]))
    return arrays


def _wild_or(draw, name, default):
    return hyper(draw, name, default, wild=draw(st.integers(0, 5)) == 0)


def _norm_type(draw):
    return draw(st.sampled_from([2.0, 2.0, 1.0, math.inf, "inf", 3.0, 0.5, 1e-3])) \
        if draw(st.integers(0, 5)) else hyper(draw, "norm_type", 2.0, wild=True)


def _global_norm_args(draw):
    return [_grads_arg(draw)], {"norm_type": _norm_type(draw)}


def _clip_grad_norm_args(draw):
    return [_grads_arg(draw), _wild_or(draw, "max_norm", 1.0)], {
        "norm_type": _norm_type(draw), "error_if_nonfinite": _wild_or(draw, "flag", False)}


def _clip_grad_value_args(draw):
    return [_grads_arg(draw), _wild_or(draw, "clip_value", 1.0)], {}


def _accumulate_args(draw):
    """Two arrays, or two aligned lists (sometimes not aligned, or an array with a list)."""
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    how = draw(st.sampled_from(["arrays", "lists", "lists", "count", "mixed"]))
    if how == "arrays":
        shape = draw(shapes())
        pair = [draw(values(int(np.prod(shape)), dtype)).reshape(shape) for _ in range(2)]
        if draw(st.integers(0, 4)) == 0:
            mutate(draw, pair, draw(st.integers(0, 1)))
        acc, grad = pair
    else:
        acc, shapes_ = array_list(draw, dtype)
        grad, _ = array_list(draw, dtype, shapes_=shapes_)
        if how == "count":
            grad = grad[:-1] if grad else grad + [np.zeros(1, dtype)]
        elif how == "mixed":
            grad = draw(values(1, dtype))
    return [acc, grad], {"scale": _wild_or(draw, "scale", 1.0)}


def _accumulate_scale(args, kwargs):
    """acc + scale * grad is off by a rounding of each term: |acc| and |scale * grad| bound it."""
    s = kwargs["scale"]
    acc, grad = (arrays_in([a]) for a in args)
    return acc + [np.abs(np.asarray(g, np.float64)) * abs(s) for g in grad]


# Inputs whose magnitudes set the error scale of a target's outputs (default: all of its
# arrays, right for an update rule whose new values are sums of those). Clipping and the norm
# round once relative to their result, so only the result's own magnitude counts: the input's
# would hide a wrong coefficient (a 1e30 gradient clipped to norm 1).
ERROR_SCALE = {
    "global_norm": lambda args, kwargs: [],
    "clip_grad_norm_": lambda args, kwargs: [],
    "clip_grad_value_": lambda args, kwargs: [],
    "accumulate_": _accumulate_scale,
}

ARGUMENTS.update({
    "global_norm": _global_norm_args,
    "clip_grad_norm_": _clip_grad_norm_args,
    "clip_grad_value_": _clip_grad_value_args,
    "accumulate_": _accumulate_args,
})


def hyper(draw, name, default, wild=False):
    """A hyperparameter near its default, or (``wild``) anything, valid or not."""
    if wild:
        return draw(st.sampled_from(WILD + ((0.9, 0.999, 0.5),) if isinstance(default, tuple) else WILD))
    if isinstance(default, bool):
        return draw(st.booleans())
    if isinstance(default, tuple):
        return tuple(draw(st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.999999, d])) for d in default)
    if name == "step":
        return draw(st.sampled_from([1, 2, 3, 10, 1000, 10**6]))
    if isinstance(default, (int, float)):
        return draw(st.sampled_from([default, default, 0.0, 1e-8, 1e-3, 0.1, 0.5, 1.0, 3.0, 1e4]))
    return default


# --- comparison -------------------------------------------------------------------------------

def snapshot(objs):
    return [(o.tobytes(), o.dtype.str, o.shape) if isinstance(o, np.ndarray) else repr(o) for o in objs]


def overflowed(inputs, outputs, n):
    """Elements (of n) where the reference overflowed: every input of that length finite there,
    some reference output of that length infinite. There a fused multiply-add of the compiled
    kernels legitimately differs (fma(-a, a, inf) is inf where inf - a*a is inf - inf = NaN;
    fma(s, g, acc) is finite where s*g alone overflows), so such elements are not compared.
    Any NaN/inf input at the element, or no overflow, and the element is compared strictly."""
    inputs = [np.asarray(x).reshape(-1) for x in inputs
              if isinstance(x, np.ndarray) and x.dtype in RTOL and x.size == n]
    outputs = [np.asarray(x).reshape(-1) for x in outputs
               if isinstance(x, np.ndarray) and x.dtype in RTOL and x.size == n]
    finite = np.ones(n, bool)
    for x in inputs:
        finite &= np.isfinite(x)
    inf = np.zeros(n, bool)
    for x in outputs:
        inf |= np.isinf(x)
    return finite & inf


def same_result(actual, expected, before, loose=1.0, skip=None):
    """Element-wise agreement of compiled and reference outputs (see module docstring).

    ``before``: arrays whose magnitudes set the error scale; ``loose`` widens the tolerance
    (several optimizer steps carry fused multiply-add differences forward through the state);
    ``skip``: a mask of elements not compared (see ``overflowed``)."""
    if np.asarray(expected).dtype not in RTOL:   # an input the call ignored (e.g. max_exp_avg_sq
        same = np.array_equal(np.asarray(actual), np.asarray(expected), equal_nan=False) or \
            np.asarray(actual).tobytes() == np.asarray(expected).tobytes()
        return None if same else "an array that is not float32/float64 changed"  # without amsgrad)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    if a.shape != e.shape:
        return "shapes differ"
    if skip is not None and skip.any():
        keep = ~skip
        a, e = a[keep], e[keep]
        before = [np.asarray(b, np.float64).reshape(-1)[keep] for b in before
                  if np.asarray(b).size == keep.size]
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        return f"NaN at {np.flatnonzero(nan_a != nan_e)[:5]}: got {a[nan_a != nan_e][:5]} want {e[nan_a != nan_e][:5]}"
    ok = ~nan_e
    inf_e = np.isinf(e) & ok
    if not np.array_equal(a[inf_e], e[inf_e]) or np.isinf(a[ok & ~inf_e]).any():
        bad = ok & (np.isinf(a) != np.isinf(e))
        return f"inf mismatch at {np.flatnonzero(bad)[:5]}: got {a[bad][:5]} want {e[bad][:5]}"
    fin = ok & ~inf_e
    scale = np.abs(e) + sum(np.abs(np.nan_to_num(np.asarray(b, np.float64).reshape(-1), posinf=0, neginf=0))
                            for b in before if np.asarray(b).size == e.size)
    rtol = RTOL[np.asarray(actual).dtype] * loose
    tiny = np.finfo(np.asarray(actual).dtype).smallest_subnormal * 8
    bad = fin & (np.abs(a - e) > rtol * scale + tiny)
    if bad.any():
        return f"values at {np.flatnonzero(bad)[:5]}: got {a[bad][:5]} want {e[bad][:5]}"
    return None


# A call may refuse its arguments (TypeError/ValueError), or refuse to go on (RuntimeError:
# error_if_nonfinite=True and a non-finite norm); either way it must have changed nothing.
REFUSALS = (TypeError, ValueError, RuntimeError)


def arrays_in(objs):
    """The arrays of ``objs``, also those inside lists/tuples (the gradients of clip_grad_norm_)."""
    out = []
    for x in objs:
        if isinstance(x, np.ndarray):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out += arrays_in(x)
    return out


def outcome(backend, fn, make):
    """Run fn(*args, **kwargs) from make() on backend: ('ok', None, arrays, returned) or
    ('refused', exc type, arrays, None)."""
    args, kwargs = make()
    arrays = arrays_in(list(args) + list(kwargs.values()))
    before = snapshot(arrays)
    with fastgd.use_backend(backend):
        try:
            returned = fn(*args, **kwargs)
        except REFUSALS as exc:
            assert snapshot(arrays) == before, f"{backend}: refused ({exc}) but changed an input"
            return "refused", type(exc), [np.array(x) for x in arrays], None
    return "ok", None, arrays, returned


# --- targets ----------------------------------------------------------------------------------

# Public functions of fastgd.functional that run a kernel without the trailing "_" of an
# in-place update: they return a value, which is compared too. (Pure-Python scalar helpers,
# adagrad_lr, nadam_coefficients, radam_rectification, run no kernel.)
RETURNING = ("global_norm",)


def functional_targets():
    return sorted(name for name, fn in vars(functional).items()
                  if (name.endswith("_") or name in RETURNING) and not name.startswith("_")
                  and callable(fn) and getattr(fn, "__module__", None) == functional.__name__)


def build_functional_call(draw, name):
    """(args, kwargs) for functional ``name``, from its signature (or ARGUMENTS)."""
    if name in ARGUMENTS:
        return ARGUMENTS[name](draw)
    sig = inspect.signature(getattr(functional, name))
    array_names = [p.name for p in sig.parameters.values()
                   if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    optional = [p.name for p in sig.parameters.values() if p.default is None]
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = draw(shapes())
    n = int(np.prod(shape))
    arrays = [draw(values(n, dtype)).reshape(shape) for _ in array_names + optional]
    if draw(st.integers(0, 4)) == 0:
        mutate(draw, arrays, draw(st.integers(0, len(arrays) - 1)))
    kwargs = {}
    scalars = [p for p in sig.parameters.values()
               if p.name not in array_names and p.name not in optional and p.kind is not p.VAR_KEYWORD]
    wild = draw(st.integers(-3 * len(scalars), len(scalars) - 1))   # one wild value in 1 case of 4
    for i, p in enumerate(scalars):
        kwargs[p.name] = hyper(draw, p.name, p.default if p.default is not p.empty else 1, wild == i)
    for k, name_opt in enumerate(optional):
        if draw(st.integers(0, 9)):      # usually passed (a flag may need it), sometimes left None
            kwargs[name_opt] = arrays[len(array_names) + k]
    return arrays[:len(array_names)], kwargs


def _copier(args, kwargs):
    """A function returning fresh deep copies of (args, kwargs), aliasing and flags preserved."""
    def make():
        memo = {}
        def cp(x):
            if isinstance(x, np.ndarray):
                base = x.base if isinstance(x.base, np.ndarray) else None
                if base is not None:                  # keep views of one buffer views of one copy
                    key = id(base)
                    if key not in memo:
                        memo[key] = base.copy()
                    offset = x.__array_interface__["data"][0] - base.__array_interface__["data"][0]
                    y = np.ndarray(x.shape, x.dtype, memo[key], offset, x.strides)
                else:
                    key = id(x)
                    if key not in memo:
                        memo[key] = x.copy(order="K")
                    y = memo[key]
                if not x.flags.writeable:
                    y.setflags(write=False)
                return y
            return x
        def cp_all(x):
            if isinstance(x, (list, tuple)):
                return type(x)(cp_all(y) for y in x)
            return cp(x)
        return [cp_all(a) for a in args], {k: cp_all(v) for k, v in kwargs.items()}
    return make


def fuzz_functional(name, backend, stats):
    fn = getattr(functional, name)

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=PHASES,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        args, kwargs = build_functional_call(data.draw, name)
        make = _copier(args, kwargs)
        got = outcome(backend, fn, make)
        want = outcome("numpy", fn, make)
        stats["cases"] += 1
        assert got[0] == want[0] and got[1] == want[1], f"{backend} {got[:2]} but reference {want[:2]}"
        # The independent oracle of refusals (functional_outcome), not fastgd's checks.
        predicted = functional_outcome(name, *make())
        assert got[0] == predicted, f"{backend} {got[:2]}, but the rules say {predicted}"
        if got[0] == "refused":
            stats["refused"] += 1
            return
        stats["valid"] += 1
        if any(pred(args, kwargs) for pred, _ in KNOWN_DIVERGENCES.get(name, ())):
            stats["known_divergence"] = stats.get("known_divergence", 0) + 1
            return
        before = arrays_in(list(args) + list(kwargs.values()))
        magnitudes = ERROR_SCALE[name](args, kwargs) if name in ERROR_SCALE else before
        for i, (a, e) in enumerate(zip(got[2], want[2])):
            skip = overflowed(before, want[2], np.asarray(e).size)
            problem = same_result(a, e, magnitudes, skip=skip)
            assert problem is None, f"array {i}: {problem}"
        if got[3] is not None or want[3] is not None:    # a returned norm
            assert isinstance(got[3], float) and isinstance(want[3], float), (got[3], want[3])
            problem = same_result(np.array([got[3]]), np.array([want[3]]), [])
            assert problem is None, f"returned value: {problem}"

    check()


def _state_arrays(opt, i, copy=False):
    """The state arrays of the optimizer's parameter i (none before its first step)."""
    arrays = [v for v in opt.state.get(i, {}).values() if isinstance(v, np.ndarray)]
    return [a.copy() for a in arrays] if copy else arrays


# --- what is valid, stated here (not fastgd._validate) -----------------------------------------
# Both outcomes above come through fastgd's one validation layer, so their agreeing on a refusal
# says nothing about whether that refusal is right. For the optimizers, the fuzz also checks
# every outcome against this independent statement of the documented rules (torch.optim's
# domains, with fastgd's stricter types): a backend must refuse exactly what it says is invalid.

def _real(x):
    """A real number as an option takes it: an int or float, never a bool (True is not a lr)."""
    return type(x) in (int, float) or isinstance(x, (np.integer, np.floating))


def _in(lo, hi, *, lo_open=False, hi_open=True):
    def ok(x):
        if not _real(x):
            return False
        x = float(x)
        return (lo < x if lo_open else lo <= x) and (x < hi if hi_open else x <= hi)
    return ok


def _flag(x):
    return isinstance(x, (bool, np.bool_))


def _betas(x):
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(_in(0.0, 1.0)(b) for b in x)


def _valid_norm_type(x):
    if isinstance(x, str):
        return x.strip().lower() in ("inf", "infinity")
    return _real(x) and float(x) > 0.0          # inf included


VALID_OPTION = {
    "lr": _in(0.0, math.inf), "lr_decay": _in(0.0, math.inf), "weight_decay": _in(0.0, math.inf),
    "momentum": _in(0.0, math.inf), "momentum_decay": _in(0.0, math.inf),
    "initial_accumulator_value": _in(0.0, math.inf),
    "eps": _in(0.0, math.inf, lo_open=True),
    "alpha": _in(0.0, 1.0), "dampening": _in(0.0, 1.0, hi_open=False), "betas": _betas,
    "amsgrad": _flag, "centered": _flag, "decoupled_weight_decay": _flag, "maximize": _flag,
    "nesterov": _flag, "error_if_nonfinite": _flag,
    "max_grad_norm": lambda x: x is None or (_real(x) and float(x) > 0.0),   # inf: never clips
    "norm_type": _valid_norm_type,
}


def valid_options(kwargs):
    """Whether an optimizer constructor must accept ``kwargs`` (the options drawn)."""
    if not all(VALID_OPTION[k](v) for k, v in kwargs.items()):
        return False
    # SGD's one rule across options (torch.optim.SGD's): Nesterov needs momentum and no dampening
    if kwargs.get("nesterov") and (float(kwargs.get("momentum", 0.0)) <= 0.0
                                   or float(kwargs.get("dampening", 0.0)) != 0.0):
        return False
    return True


def _total_norm(grads, norm_type):
    """The global norm of the gradients, in float64 (NumPy, not fastgd's kernels)."""
    p = math.inf if isinstance(norm_type, str) else float(norm_type)
    flat = [np.abs(np.asarray(g, np.float64)).reshape(-1) for g in grads]
    flat = np.concatenate(flat) if flat else np.zeros(0)
    if p == math.inf:
        return float(flat.max()) if flat.size else 0.0
    with np.errstate(all="ignore"):
        return float(np.sum(flat ** p) ** (1.0 / p))


def step_outcome(params, grads, kwargs):
    """What ``opt.step(grads)`` must do: 'refused' (TypeError/ValueError: gradients that do not
    match the parameters; RuntimeError: a non-finite norm with error_if_nonfinite) or 'ok'."""
    if len(grads) != len(params):
        return "refused"
    given = []
    for p, g in zip(params, grads):
        if g is None:                                   # a parameter without gradient: skipped
            continue
        if not (isinstance(g, np.ndarray) and g.dtype == p.dtype and g.shape == p.shape
                and g.flags.c_contiguous):              # read-only is fine: grads are only read
            return "refused"
        if g.size and np.may_share_memory(g, p):        # a gradient cannot be its own parameter
            return "refused"
        given.append(g)
    if (kwargs.get("max_grad_norm") is not None and kwargs.get("error_if_nonfinite")
            and given and not math.isfinite(_total_norm(given, kwargs.get("norm_type", 2.0)))):
        return "refused"
    return "ok"


FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _array_ok(a, like=None, writable=True):
    """An array a kernel can update in place: an ndarray of float32/float64 (native order),
    C-contiguous, writable unless only read; with ``like``, of its dtype and shape."""
    if not (isinstance(a, np.ndarray) and a.dtype in FLOATS and a.flags.c_contiguous):
        return False
    if like is not None and (a.dtype != like.dtype or a.shape != like.shape):
        return False
    return a.flags.writeable or not writable


def _disjoint(arrays):
    """No two of the (non-empty) arrays share memory."""
    arrays = [a for a in arrays if a.size]
    return not any(np.may_share_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


VALID_KEYWORD = {**VALID_OPTION,
                 # 1-based, and below 2**63 (beta ** t must be a float)
                 "step": lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 1 <= x < 2 ** 63,
                 "mu_product": _in(0.0, 1.0, hi_open=False),
                 "grad_scale": lambda x: _real(x) and math.isfinite(float(x))}

# The optional state arrays of a functional rule: name -> the options that require it. One
# passed though not required must still be an array like param (it is checked, not used).
OPTIONAL_STATE = {
    "sgd_": {"momentum_buffer": lambda kw: float(kw.get("momentum", 0.0)) > 0.0},
    "rmsprop_": {"momentum_buffer": lambda kw: float(kw.get("momentum", 0.0)) > 0.0,
                 "grad_avg": lambda kw: bool(kw.get("centered", False))},
    "adam_": {"max_exp_avg_sq": lambda kw: bool(kw.get("amsgrad", False))},
}


def _grad_list(grads, writable):
    """The arrays of a ``grads`` argument (one array, or a list/tuple with None entries), or None
    if it is not one: arrays of one dtype, each valid."""
    if isinstance(grads, np.ndarray):
        grads = [grads]
    if not isinstance(grads, (list, tuple)):
        return None
    arrays = [g for g in grads if g is not None]
    if not all(_array_ok(g, writable=writable) for g in arrays) or len({g.dtype for g in arrays}) > 1:
        return None
    return arrays


def functional_outcome(name, args, kwargs):
    """What fastgd.functional.<name>(*args, **kwargs) must do: 'refused' or 'ok'."""
    if name in ("global_norm", "clip_grad_norm_", "clip_grad_value_"):
        grads = _grad_list(args[0], writable=name != "global_norm")
        if name == "global_norm":
            return "ok" if grads is not None and _valid_norm_type(kwargs["norm_type"]) else "refused"
        if name == "clip_grad_value_":
            return "ok" if grads is not None and _in(0.0, math.inf)(args[1]) else "refused"
        if not (grads is not None and VALID_OPTION["max_grad_norm"](args[1]) and args[1] is not None
                and _valid_norm_type(kwargs["norm_type"]) and _flag(kwargs["error_if_nonfinite"])):
            return "refused"
        if kwargs["error_if_nonfinite"] and not math.isfinite(_total_norm(grads, kwargs["norm_type"])):
            return "refused"
        return "ok"
    if name == "accumulate_":
        acc, grad = args
        if not VALID_KEYWORD["grad_scale"](kwargs["scale"]):
            return "refused"
        if isinstance(acc, np.ndarray):
            acc, grad = [acc], [grad]
        elif isinstance(grad, np.ndarray) or not isinstance(acc, (list, tuple)) \
                or not isinstance(grad, (list, tuple)) or len(acc) != len(grad):
            return "refused"
        ok = all(_array_ok(a) and _array_ok(g, like=a, writable=False) and _disjoint([a, g])
                 for a, g in zip(acc, grad))
        return "ok" if ok else "refused"
    # an update rule: options first, then its arrays
    optional = OPTIONAL_STATE.get(name, {})
    options = {k: v for k, v in kwargs.items() if k not in optional}
    if not all(VALID_KEYWORD[k](v) for k, v in options.items()):
        return "refused"
    if name == "sgd_" and not valid_options({k: options.get(k, d) for k, d in
                                             (("nesterov", False), ("momentum", 0.0), ("dampening", 0.0))}):
        return "refused"
    param, grad, *states = args
    if not (_array_ok(param) and _array_ok(grad, like=param, writable=False)
            and all(_array_ok(a, like=param) for a in states)):
        return "refused"
    used = [param, grad, *states]
    for state, required in optional.items():
        a = kwargs.get(state)
        if a is None:
            if required(options):
                return "refused"
            continue
        if not _array_ok(a, like=param):
            return "refused"
        if required(options):       # only arrays the step uses must not share memory
            used.append(a)
    return "ok" if _disjoint(used) else "refused"


def fuzz_rule(rule_name, backend, stats):
    rule = RULES[rule_name]
    cls = getattr(fastgd, rule.optimizer)
    sig = inspect.signature(cls.__init__)
    options = {p.name: p.default for p in list(sig.parameters.values())[2:]
               if p.default is not p.empty}

    @seed(SEED)
    @settings(max_examples=max(EXAMPLES // 2, 10), deadline=None, database=None, phases=PHASES,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        draw = data.draw
        dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
        shapes_ = [draw(shapes()) for _ in range(draw(st.integers(1, 3)))]
        params = [draw(values(int(np.prod(s)), dtype)).reshape(s) for s in shapes_]
        kwargs = dict(rule.options)
        for k, d in options.items():
            if k not in rule.options and draw(st.booleans()):
                kwargs[k] = hyper(draw, k, d, wild=draw(st.integers(0, 7)) == 0)
        steps = []
        for _ in range(draw(st.integers(1, 3))):
            grads = [draw(values(p.size, dtype)).reshape(p.shape) for p in params]
            if draw(st.integers(0, 3)) == 0:
                how = draw(st.sampled_from(["none", "count", "mutate", "alias_param"]))
                if how == "none":
                    grads[0] = None
                elif how == "count":
                    grads = grads[:-1] if len(grads) > 1 else grads + grads
                elif how == "mutate":
                    mutate(draw, grads, draw(st.integers(0, len(grads) - 1)))
                else:
                    grads[0] = params[0]
            steps.append(grads)
        results = {}
        for b in (backend, "numpy"):
            ps = [p.copy() for p in params]
            trace = []
            with fastgd.use_backend(b):
                try:
                    opt = cls(ps, **kwargs)
                except (TypeError, ValueError) as exc:
                    results[b] = [("refused-init", type(exc), None)]
                    continue
                for grads in steps:
                    g = [x if x is not params[0] else ps[0] for x in grads]
                    before = snapshot(ps) + [repr(opt.state_dict())]
                    inputs = [[p.copy(), gi, *_state_arrays(opt, i, copy=True)]
                              for i, (p, gi) in enumerate(zip(ps, g + [None] * len(ps)))]
                    try:
                        opt.step(g)
                        trace.append(("ok", [p.copy() for p in ps],
                                      [overflowed(inputs[i], [p, *_state_arrays(opt, i)], p.size)
                                       for i, p in enumerate(ps)]))
                    except REFUSALS as exc:
                        assert snapshot(ps) + [repr(opt.state_dict())] == before, \
                            f"{b}: refused step ({exc}) changed the optimizer"
                        trace.append(("refused", type(exc), None))
            results[b] = trace
        stats["cases"] += 1
        got, want = results[backend], results["numpy"]
        assert [t[0] for t in got] == [t[0] for t in want], (got, want)
        # The independent oracle of refusals (valid_options, step_outcome), not fastgd's checks.
        if not valid_options(kwargs):
            predicted = ["refused-init"]
        else:
            predicted = [step_outcome(params, grads, kwargs) for grads in steps]
        assert [t[0] for t in got] == predicted, (f"{backend}: {[t[0] for t in got]}, but the "
                                                  f"rules say {predicted}; options {kwargs}")
        if got and got[0][0] == "refused-init":
            stats["refused"] += 1
            return
        # Error scale of a parameter: its value before the step plus the sizes of every update
        # so far (a rounding difference of a large early update is carried by later steps).
        previous = params
        moved = [np.zeros(p.size) for p in params]
        # Elements where the reference overflowed, at this step or before: the state carries
        # that step's fused-multiply-add difference on (see ``overflowed``).
        tainted = [np.zeros(p.size, bool) for p in params]
        for (kind, a, _), (_, e, overflow) in zip(got, want):
            if kind == "refused":
                stats["refused"] += 1
                assert a == e
                continue
            stats["valid"] += 1
            for i, (x, y, p0) in enumerate(zip(a, e, previous)):
                step = np.abs(np.asarray(y, np.float64) - np.asarray(p0, np.float64)).reshape(-1)
                moved[i] = moved[i] + np.nan_to_num(step, nan=0.0, posinf=0.0)
                tainted[i] |= overflow[i]
                problem = same_result(x, y, [p0, moved[i]], loose=10.0, skip=tainted[i])
                assert problem is None, (f"{problem}; {dtype.name} shapes {shapes_} "
                                         f"options {kwargs}")
            previous = e

    check()


def main(backends):
    np.seterr(all="ignore")   # the reference meets NaN/inf/overflow on purpose
    report = {}
    targets = [("functional", n) for n in functional_targets()] + [("rule", r) for r in sorted(RULES)]
    for backend in backends:
        for kind, name in targets:
            key = f"{kind}:{name}:{backend}"
            print("fuzzing", key, file=sys.stderr, flush=True)   # names the culprit of a crash
            stats = {"cases": 0, "valid": 0, "refused": 0, "failure": None}
            try:
                (fuzz_functional if kind == "functional" else fuzz_rule)(name, backend, stats)
            except Exception as exc:   # the falsifying example, reported by the test
                stats["failure"] = f"{type(exc).__name__}: {exc}"[:4000]
            report[key] = stats
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
