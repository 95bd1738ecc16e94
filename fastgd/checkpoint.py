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
file under other names (anything not starting with ``optim/``).
"""
import json

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
            out[key] = np.array(value, dtype=np.int64) if name == "step" else np.asarray(value)
    return out


def from_arrays(arrays):
    """The state_dict stored by ``to_arrays`` in ``arrays`` (a dict or an ``np.load`` file)."""
    if _GROUPS not in arrays:
        raise ValueError(f"no optimizer checkpoint here: {_GROUPS!r} is missing")
    groups = json.loads(str(arrays[_GROUPS][()]))
    state = {}
    for key in arrays:
        if not key.startswith(PREFIX + "state/"):
            continue
        _, _, index, name = key.split("/", 3)
        value = np.asarray(arrays[key])
        state.setdefault(int(index), {})[name] = int(value) if name == "step" else value.copy()
    return {"state": state, "param_groups": groups}


def save_npz(file, optimizer, **arrays):
    """``np.savez(file, ...)`` of ``optimizer.state_dict()`` (plus any extra named ``arrays``)."""
    np.savez(file, **arrays, **to_arrays(optimizer.state_dict()))


def load_npz(file, optimizer):
    """Load what ``save_npz`` wrote into ``optimizer`` (checked whole before anything changes)."""
    with np.load(file) as f:
        optimizer.load_state_dict(from_arrays(f))
