"""The one validation layer: everything a kernel is given passes through here first.

A kernel updates 1-D contiguous arrays of one float dtype in place. These checks turn any
C-contiguous array into such a view without copying, and refuse, with an error naming the
argument, what cannot be viewed that way. They run before any write, so a call that raises has
changed nothing.
"""
import math
import numbers

import numpy as np

from . import formats

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: what the optimizers step (fastgd/formats.py): also bfloat16 (ml_dtypes) and float16
STORAGE_DTYPES = tuple(formats.CODES)


def array(name, a, *, like=None, writable=True, dtypes=FLOAT_DTYPES):
    """``a`` as a flat view (no copy), after checking type, dtype, layout and writability.

    ``like``: the array ``a`` must match in dtype and shape (usually the parameter).
    ``dtypes``: the dtypes accepted (the single kernels' float32/float64, or STORAGE_DTYPES).
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(a).__name__}")
    if a.dtype not in dtypes:
        names = ", ".join(str(d) for d in dtypes[:-1]) + f" or {dtypes[-1]}"
        raise TypeError(f"{name} must have dtype {names} (native byte order); got {a.dtype}")
    if like is not None:
        if a.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but the parameter has {like.dtype}")
        if a.shape != like.shape:
            raise ValueError(f"{name} has shape {a.shape} but the parameter has {like.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (strides {a.strides} for shape {a.shape}); "
                         "an optimizer updates arrays in place and cannot do that through a copy")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return a if a.ndim == 1 else a.reshape(-1)   # a view costs 0.3 us: only where needed


def matching(name, a, like, *, writable=False):
    """``array(name, a, like=like)`` with a fast path for the common case of a plain valid array.

    ``like`` must itself be valid. The optimizers call this for every gradient at every step.
    """
    if type(a) is np.ndarray and a.dtype == like.dtype and a.shape == like.shape:
        flags = a.flags
        if flags.c_contiguous and (flags.writeable or not writable):
            return a if a.ndim == 1 else a.reshape(-1)
    return array(name, a, like=like, writable=writable, dtypes=STORAGE_DTYPES)


def no_overlap(**arrays):
    """Refuse any two of the named arrays sharing memory (a state aliasing param or grad)."""
    items = [(k, v) for k, v in arrays.items() if v is not None and v.size]
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} share memory; each must be its own array")


def _real(name, value):
    if type(value) is not float:  # a plain float skips the (slow) abstract-class check
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
        value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def nonnegative(name, value):
    """A finite real >= 0 (lr, weight_decay, momentum, ...)."""
    value = _real(name, value)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def positive(name, value):
    """A finite real > 0 (eps, max_norm, ...)."""
    value = _real(name, value)
    if not (0.0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0; got {value}")
    return value


def finite(name, value):
    """Any finite real (grad_scale, ...)."""
    value = _real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def unit_interval(name, value):
    """A real in [0, 1) (betas, alpha, ...)."""
    value = _real(name, value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return value


def betas(value, name="betas"):
    """A pair (beta1, beta2), each in [0, 1)."""
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (beta1, beta2); got {value!r}") from None
    return unit_interval(f"{name}[0]", b1), unit_interval(f"{name}[1]", b2)


def step(value):
    """The 1-based step count (an int below 2**63: beta ** t must be a float)."""
    if type(value) is int and 1 <= value < 2 ** 63:     # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"step must be an int; got {type(value).__name__}")
    if not 1 <= value < 2 ** 63:
        raise ValueError(f"step must be an int in [1, 2**63) (it is 1-based); got {value}")
    return int(value)


def flag(name, value):
    """A bool option (numpy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return bool(value)


def norm_type(value):
    """The p of a p-norm: a real > 0, or inf (also the string 'inf', as torch accepts)."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    value = _real("norm_type", value)
    if not value > 0.0:
        raise ValueError(f"norm_type must be > 0 or inf; got {value}")
    return value


def max_norm(name, value):
    """A clipping threshold: a real > 0; inf is allowed (never clips, the norm is still measured)."""
    value = _real(name, value)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def array_list(name, arrays, *, writable):
    """A list of arrays of one float dtype (any shapes; None entries dropped) as flat views.

    One array is accepted as a list of one. Raises before anything is written.
    """
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    elif not isinstance(arrays, (list, tuple)):
        try:
            arrays = list(arrays)
        except TypeError:
            raise TypeError(f"{name} must be a list of numpy arrays; got {type(arrays).__name__}") from None
    flats, dtype = [], None
    for i, a in enumerate(arrays):
        if a is None:
            continue
        f = array(f"{name}[{i}]", a, writable=writable)
        if dtype is None:
            dtype, first = a.dtype, i
        elif a.dtype != dtype:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype} but {name}[{first}] has {dtype}; "
                            "all arrays of one call must have one dtype")
        flats.append(f)
    return flats


def fraction(name, value):
    """A real in [0, 1] (dampening, a running product of momentum coefficients, ...)."""
    value = _real(name, value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return value


def _betas_option(name, value):
    return betas(value, name)


#: The check of every optimizer option, by name. An option means the same in every rule (lr is
#: always a finite real >= 0, betas always a pair in [0, 1), ...), so it is checked in one place;
#: the optimizers, fastgd.functional and fastgd.torch all check their options through this table.
OPTION_CHECKS = {
    "lr": nonnegative,
    "lr_decay": nonnegative,
    "weight_decay": nonnegative,
    "momentum": nonnegative,
    "momentum_decay": nonnegative,
    "initial_accumulator_value": nonnegative,
    "eps": positive,
    "alpha": unit_interval,
    "dampening": fraction,
    "betas": _betas_option,
    "amsgrad": flag,
    "centered": flag,
    "decoupled_weight_decay": flag,
    "maximize": flag,
    "nesterov": flag,
    "grad_scale": finite,
}


def nesterov_momentum(nesterov, momentum, dampening):
    """SGD's one rule across options: nesterov needs momentum > 0 and dampening == 0."""
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening == 0 "
                         f"(got momentum={momentum}, dampening={dampening})")


def valid(arrays, readonly=-1, mixed=False):
    """True when all of ``arrays`` pass the kernel checks at once (kernels/arrays.pyx); False
    means "run the checks one by one", which name what is wrong (or find nothing: the fast form
    refuses some valid calls, e.g. more than 16 arrays). The first call picks the form."""
    _pick()
    return valid(arrays, readonly, mixed)


def disjoint(addresses, nbytes, lo, hi):
    """``addresses`` (a list of ints) as an int64 array if no span [addresses[i], addresses[i]
    + nbytes[i]) overlaps any of the spans [lo[k], hi[k]) (int64 arrays, sorted by lo,
    disjoint; an empty span overlaps nothing), else None. The first call picks the form
    (kernels/arrays.pyx, or the NumPy one here)."""
    _pick()
    return disjoint(addresses, nbytes, lo, hi)


def _python_disjoint(addresses, nbytes, lo, hi):
    start = np.array(addresses, np.int64)
    if not len(lo):
        return start
    j = np.searchsorted(lo, start + nbytes, "left") - 1   # the last span starting before the end
    hit = (j >= 0) & (hi[j] > start) & (nbytes > 0)
    return None if hit.any() else start


def _pick():
    global span, valid, disjoint
    try:
        from .backends import _check_cython_build
        _check_cython_build()
        from ._cython.arrays import disjoint as fast_disjoint, span as fast_span, valid as fast_valid
    except Exception:  # no usable extension: the same answers, slower (valid: always the checks)
        fast_span, fast_valid = _python_span, lambda arrays, readonly=-1, mixed=False: False
        fast_disjoint = _python_disjoint
    span, valid, disjoint = fast_span, fast_valid, fast_disjoint


def _python_span(a):
    if not a.nbytes:
        return (0, 0)
    lo = a.__array_interface__["data"][0]
    return (lo, lo + a.nbytes)


def span(a):
    """(lo, hi): the bytes [lo, hi) of a C-contiguous array's data ((0, 0) if it is empty).

    The first call picks the Cython form (kernels/arrays.pyx, ~0.05 us) where the extension is
    usable on this CPU, else this module's NumPy form (~3 us), and rebinds ``span`` to it.
    """
    _pick()
    return span(a)
