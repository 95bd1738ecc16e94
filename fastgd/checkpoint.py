"""Optimizer checkpoints as plain arrays: a state_dict through ``np.savez`` and back.

A state_dict is nested ({"state": {index: {name: array | step}}, "param_groups": [...]}), which
pickle stores as is but ``np.savez`` cannot. ``to_arrays`` flattens it into ``{name: array}``
(state arrays as they are, steps as int64 scalars, the param groups as one JSON string), and
``from_arrays`` rebuilds it exactly: floats go through JSON as their shortest repr, which reads
back to the same double, so save -> load -> continue is bit-identical. No pickle is involved,
so ``np.load(..., allow_pickle=False)`` (the default) reads it::

    np.savez(path, **fastgd.checkpoint.to_arrays(opt.state_dict()))
    with np.load(path) as f:
        opt.load_state_dict(fastgd.checkpoint.from_arrays(f))

or ``save_npz(path, opt)`` / ``load_npz(path, opt)``. Arrays of a model's parameters can share the
file under other names (anything not starting with ``optim/``). A file that ``to_arrays`` cannot
have written (tampered, truncated JSON, a step of 1.7) is refused with a ValueError naming the key.
"""
import json
import re

import numpy as np

PREFIX = "optim/"
_GROUPS = PREFIX + "param_groups.json"


def _plain(value):
    """A param-group option as JSON: tuples as lists, NumPy scalars as Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"param-group option {value!r} ({type(value).__name__}) cannot be stored "
                    "as plain arrays; pickle the state_dict instead")


def to_arrays(state_dict):
    """``{name: np.ndarray}`` holding ``state_dict`` (see module docstring), for ``np.savez``."""
    out = {_GROUPS: np.array(json.dumps([{k: _plain(v) for k, v in g.items()}
                                         for g in state_dict["param_groups"]]))}
    for index, s in state_dict["state"].items():
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"state keys must be parameter indices (int); got {index!r}")
        for name, value in s.items():
            if "/" in name:
                raise ValueError(f"state name {name!r} contains '/'")
            key = f"{PREFIX}state/{int(index)}/{name}"
            out[key] = np.array(_step(key, value), dtype=np.int64) if name == "step" else np.asarray(value)
    return out


_STATE = PREFIX + "state/"
_INDEX = re.compile(r"0|[1-9][0-9]*")


def _step(key, value):
    """A step count as an int: a non-negative integer (an int, or a float/array holding one
    exactly, e.g. 3.0); anything else, 1.7 included, is refused rather than truncated."""
    v = np.asarray(value)
    if v.shape != ():
        raise ValueError(f"{key!r}: a step must be a scalar non-negative integer; got an array of "
                         f"shape {v.shape}")
    if v.dtype.kind not in "iuf":
        raise ValueError(f"{key!r}: a step must be a non-negative integer; got {v[()]!r} "
                         f"(dtype {v.dtype})")
    if v.dtype.kind == "f" and not (np.isfinite(v) and float(v) == int(v)):
        raise ValueError(f"{key!r}: a step must be a non-negative integer; got {float(v)!r}")
    step = int(v)
    if step < 0:
        raise ValueError(f"{key!r}: a step must be a non-negative integer; got {step}")
    return step


def _read(arrays, key):
    """arrays[key] as an ndarray, naming the key if it cannot be read (np.load refuses object
    arrays without allow_pickle, with a message that does not say which)."""
    try:
        value = arrays[key]
    except ValueError as exc:
        raise ValueError(f"{key!r} cannot be read as a plain array ({exc}); a checkpoint holds "
                         "numeric arrays and one JSON string only") from None
    value = np.asarray(value)
    if value.dtype.kind == "O":
        raise ValueError(f"{key!r} is an object array; a checkpoint holds numeric arrays and one "
                         "JSON string only")
    return value


def _param_groups(arrays):
    if _GROUPS not in arrays:
        raise ValueError(f"no optimizer checkpoint here: {_GROUPS!r} is missing")
    raw = _read(arrays, _GROUPS)
    if raw.shape != () or raw.dtype.kind not in "US":
        raise ValueError(f"{_GROUPS!r} must be a scalar string (the param groups as JSON); got an "
                         f"array of dtype {raw.dtype} and shape {raw.shape}")
    text = raw[()]
    try:
        groups = json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{_GROUPS!r} is not valid JSON ({exc})") from None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError(f"{_GROUPS!r} must hold a JSON list of objects (one per param group); "
                         f"got {type(groups).__name__}")
    return groups


def from_arrays(arrays):
    """The state_dict stored by ``to_arrays`` in ``arrays`` (a dict or an ``np.load`` file).

    Raises ValueError, naming the key, for what ``to_arrays`` cannot have written: the param
    groups missing or not a JSON list of objects, a key under ``optim/`` that is not
    ``optim/state/<index>/<name>``, a step that is not a non-negative integer, a state value
    that is not a numeric array (strings, objects). The optimizer's ``load_state_dict`` checks
    the rest (which states a rule needs, shapes, dtypes, options).
    """
    groups = _param_groups(arrays)
    state = {}
    for key in arrays:
        if not key.startswith(PREFIX) or key == _GROUPS:
            continue        # a model's arrays may share the file
        parts = key[len(_STATE):].split("/") if key.startswith(_STATE) else None
        if parts is None or len(parts) != 2 or not _INDEX.fullmatch(parts[0]) or not parts[1]:
            raise ValueError(f"{key!r} is not a checkpoint key: expected {_GROUPS!r} or "
                             f"'{_STATE}<index>/<name>' (index a non-negative integer, name "
                             "without '/')")
        index, name = int(parts[0]), parts[1]
        value = _read(arrays, key)
        if name == "step":
            state.setdefault(index, {})[name] = _step(key, value)
            continue
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{key!r} has dtype {value.dtype}; state values are real numbers "
                             "(float arrays, or a float scalar)")
        state.setdefault(index, {})[name] = value.copy()
    return {"state": state, "param_groups": groups}


def save_npz(file, optimizer, **arrays):
    """``np.savez(file, ...)`` of ``optimizer.state_dict()`` (plus any extra named ``arrays``)."""
    np.savez(file, **arrays, **to_arrays(optimizer.state_dict()))


def load_npz(file, optimizer):
    """Load what ``save_npz`` wrote into ``optimizer`` (checked whole before anything changes)."""
    with np.load(file) as f:
        optimizer.load_state_dict(from_arrays(f))
