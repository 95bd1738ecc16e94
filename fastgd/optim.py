"""Stateful optimizers with torch.optim's API: param groups, step, state_dict.

``params`` is a list of NumPy arrays, or a list of dicts ``{"params": [...], **options}`` (param
groups, options defaulting to the constructor's). ``opt.param_groups`` is mutable, so a schedule
can change ``lr`` between steps. ``opt.step(grads)`` takes gradients aligned with the parameters
(all groups, in order; ``None`` skips a parameter, as torch skips ``grad is None``).

A subclass names its kernel and declares its options, their checks, and its state arrays; this
base does everything else once: grouping, validation before any write, lazy state creation,
dispatch to the active backend, and checkpoints.
"""
import copy
import functools
import threading

import numpy as np

from . import _validate as check
from .backends import kernel


def _exclusive(method):
    """Refuse, with a RuntimeError, a call made while another thread is inside step(),
    state_dict() or load_state_dict() of the same optimizer (issue 8: never a silent race; a
    state_dict taken during a step would be half old, half new).

    Two threads updating one optimizer's parameters and moments at once would interleave their
    read-modify-write passes element by element: a corrupted result, not "both steps". Waiting
    instead would hide the same bug (the order of the steps would depend on scheduling), so the
    second caller is told at once. The lock is an RLock, so a step may call other guarded
    methods of its own optimizer; different optimizers never contend. Cost: ~0.3 us per call.
    """
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        lock = self.__dict__.get("_busy") or self.__dict__.setdefault("_busy", threading.RLock())
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                f"{type(self).__name__}.{method.__name__}() was called while another thread is in "
                "step(), state_dict() or load_state_dict() of the same optimizer; one optimizer must "
                "be used by one thread at a time (give each thread its own optimizer, or hold a lock)")
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()
    return guarded


class Optimizer:
    """Base of every fastgd optimizer (see module docstring)."""

    #: options that hold numbers/flags; subclasses list theirs, with their checks in _check_group
    defaults = {}

    def __init__(self, params, **defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._checked = {}
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param-group dicts, not one array; "
                            "wrap it: [param]")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # --- param groups ---------------------------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a group ``{"params": [...], **options}``; missing options take the defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict; got {type(param_group).__name__}")
        params = param_group.get("params")
        if params is None:
            raise ValueError("a param group needs a 'params' entry")
        params = [params] if isinstance(params, np.ndarray) else list(params)
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {type(self).__name__}")
        group = {**self.defaults, **param_group, "params": params}
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            check.array(f"params[{i}]", p)
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        """Validate (and normalise) a group's options in place; raise naming the option."""

    def _check_group_if_changed(self, group):
        # Options are checked again only when they changed since the last check (a schedule
        # setting lr, a user editing a group): the check costs more than the step on small arrays.
        snapshot = [v for k, v in group.items() if k != "params"]
        key = id(group)
        if self._checked.get(key) != snapshot:
            self._check_group(group)
            self._checked[key] = [v for k, v in group.items() if k != "params"]

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    # --- the step -------------------------------------------------------------------------------

    @_exclusive
    def step(self, grads, *, grad_scale=1.0):
        """Update every parameter in place from ``grads`` (aligned with the parameters).

        ``grad_scale`` multiplies every gradient as it is read (loss scaling, accumulation
        averaging) without an extra pass over memory.
        """
        if grad_scale != 1.0:
            grad_scale = check.finite("grad_scale", grad_scale)
        self._apply(self._gather(grads), grad_scale)

    def _apply(self, work, grad_scale, accs=None):
        """Run the kernels over checked work; ``accs[i]``: flat accumulated gradient of work item i
        to add to its grad (and zero) in the same pass, or None."""
        for i, (group, index, p, g) in enumerate(work):
            state = self.state.get(index)
            if state is None:
                state = self.state[index] = self._init_state(group, p)
            state["step"] += 1
            self._update(group, state, p, g, grad_scale, None if accs is None else accs[i])

    def _gather(self, grads):
        """Check every parameter, gradient and group before any write; return the work list."""
        if isinstance(grads, np.ndarray):
            raise TypeError("grads must be a list of arrays aligned with the parameters, not one array; "
                            "wrap it: [grad]")
        grads = list(grads)
        n = sum(len(group["params"]) for group in self.param_groups)
        if len(grads) != n:
            raise ValueError(f"got {len(grads)} gradients for {n} parameters")
        work = []
        index = 0
        for group in self.param_groups:
            self._check_group_if_changed(group)
            for p in group["params"]:
                g = grads[index]
                if g is not None:
                    flags = p.flags
                    if not (flags.c_contiguous and flags.writeable):
                        check.array(f"params[{index}]", p)  # raises, naming what is wrong
                    pf = p.reshape(-1)
                    gf = check.matching(f"grads[{index}]", g, p)
                    if np.may_share_memory(pf, gf):
                        raise ValueError(f"grads[{index}] shares memory with its parameter")
                    state = self.state.get(index)
                    if state is not None:
                        self._complete_state(group, state, pf)
                    work.append((group, index, pf, gf))
                index += 1
        return work

    def _complete_state(self, group, state, p):
        """Add state an option switched on mid-run needs (e.g. amsgrad), before any write."""
        fresh = None
        for name in self._state_keys(group):
            if name not in state:
                fresh = fresh or self._init_state(group, p)
                state[name] = fresh[name]

    def _state_keys(self, group):
        """Names of the state arrays a parameter needs under this group's options."""
        return [k for k in self._init_state(group, np.empty(0)) if k != "step"]

    def _init_state(self, group, p):
        """Fresh state for a parameter (flat arrays of its dtype) with ``step`` = 0."""
        raise NotImplementedError

    def _update(self, group, state, p, g, grad_scale, acc):
        """Run the kernel on flat views ``p``, ``g`` with ``state["step"]`` already advanced.

        ``acc``: None, or a flat accumulated gradient that the kernel adds to ``g`` and zeroes in
        the same pass (pass ``p, use_acc=False`` to the kernel when None; kernels/CONTRACT.md).
        """
        raise NotImplementedError

    # --- checkpoints ----------------------------------------------------------------------------

    @_exclusive
    def state_dict(self):
        """A snapshot, in torch.optim's layout: {"state": {index: {...}}, "param_groups": [...]}.

        Arrays are copied, so later steps do not change a saved dict; parameters are named by their
        index, as torch does.
        """
        groups, index = [], 0
        for group in self.param_groups:
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(g)
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    @_exclusive
    def load_state_dict(self, state_dict):
        """Restore a snapshot from ``state_dict()``; checked whole before anything changes."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)):
            raise ValueError("state_dict['param_groups'] must be a list of param-group dicts")
        if not isinstance(state_dict["state"], dict):
            raise ValueError("state_dict['state'] must be a dict {parameter index: state dict}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups; this optimizer has "
                             f"{len(self.param_groups)}")
        kind = type(self).__name__
        new_groups = []
        for i, (mine, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"param_groups[{i}] of the state_dict is not a param-group dict "
                                 "with a 'params' list")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"param_groups[{i}] has {len(saved['params'])} parameters in the "
                                 f"state_dict but {len(mine['params'])} here")
            unknown = set(saved) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"param_groups[{i}] has option(s) {sorted(unknown)} that "
                                 f"{kind} does not know (a state_dict of another optimizer?)")
            missing = set(self.defaults) - set(saved)
            if missing:
                raise ValueError(f"param_groups[{i}] of the state_dict lacks option(s) "
                                 f"{sorted(missing)} of {kind} (a state_dict of another optimizer?)")
            group = {**mine, **{k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}}
            group["params"] = mine["params"]
            self._check_group(group)
            new_groups.append(group)
        params = self._params()
        order = [i for saved in saved_groups for i in saved["params"]]
        if (not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in order)
                or len(set(order)) != len(order)):
            raise ValueError("the state_dict's param groups must list distinct parameter indices (ints)")
        saved_to_mine = dict(zip(order, range(len(params))))
        new_state = {}
        group_of = [g for g in new_groups for _ in g["params"]]
        for key, s in state_dict["state"].items():
            if isinstance(key, bool) or key not in saved_to_mine:
                raise ValueError(f"state_dict has state for parameter {key!r}, which no group lists")
            index = saved_to_mine[key]
            new_state[index] = self._load_param_state(index, group_of[index], params[index], s)
        self.param_groups[:] = new_groups
        self.state = new_state

    def _load_param_state(self, index, group, p, saved):
        """A checked private copy of one parameter's saved state."""
        if not isinstance(saved, dict) or "step" not in saved:
            raise ValueError(f"state of parameter {index} must be a dict with a 'step'")
        expected = set(self._init_state(group, np.empty(0, p.dtype)))
        if set(saved) != expected:
            raise ValueError(f"state of parameter {index} has keys {sorted(saved, key=str)}; expected "
                             f"{sorted(expected)} for these options")
        out = {}
        for k, v in saved.items():
            if k == "step":
                if isinstance(v, np.ndarray) and v.ndim == 0:
                    v = v.item()
                if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))
                        or not float(v).is_integer() or v < 0):
                    raise ValueError(f"state of parameter {index}: step must be an int >= 0; got {v!r}")
                out[k] = int(v)
                continue
            try:
                a = np.asarray(v)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"state {k!r} of parameter {index} is not an array: {exc}") from None
            if a.dtype != p.dtype or a.shape not in ((p.size,), p.shape):
                raise ValueError(f"state {k!r} of parameter {index} has shape {a.shape} and dtype "
                                 f"{a.dtype}; the parameter has {p.shape} and {p.dtype}")
            out[k] = np.array(a, dtype=p.dtype, order="C").reshape(-1)
        return out

    def __getstate__(self):
        # Pickle (multiprocessing 'spawn'/'forkserver', copy.deepcopy) without the step lock,
        # and without the cache of checked groups, which is keyed by id() of this process.
        state = dict(self.__dict__)
        state.pop("_busy", None)
        state["_checked"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with torch.optim.Adam's arguments and defaults.

    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2  (vmax = max(vmax, v) if amsgrad)
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    weight_decay adds weight_decay * p to g, or with decoupled_weight_decay=True (AdamW) scales
    p by 1 - lr * weight_decay before the update.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay)

    def _check_group(self, group):
        check.nonnegative("lr", group["lr"])
        group["betas"] = check.betas(group["betas"])
        check.positive("eps", group["eps"])
        check.nonnegative("weight_decay", group["weight_decay"])
        check.flag("amsgrad", group["amsgrad"])
        check.flag("maximize", group["maximize"])
        check.flag("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _init_state(self, group, p):
        state = {"step": 0, "exp_avg": np.zeros(p.size, p.dtype), "exp_avg_sq": np.zeros(p.size, p.dtype)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros(p.size, p.dtype)
        return state

    def _update(self, group, state, p, g, grad_scale, acc):
        t = state["step"]
        beta1, beta2 = group["betas"]
        v = state["exp_avg_sq"]
        kernel("adam")(p, g, p if acc is None else acc, state["exp_avg"], v,
                       state.get("max_exp_avg_sq", v), grad_scale, group["maximize"], acc is not None,
                       float(group["lr"]), beta1, beta2, float(group["eps"]),
                       float(group["weight_decay"]), group["decoupled_weight_decay"], group["amsgrad"],
                       1.0 - beta1 ** t, 1.0 - beta2 ** t)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, as torch.optim.AdamW.

    p *= 1 - lr * weight_decay, then the Adam update (see Adam).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)

    def _check_group(self, group):
        super()._check_group(group)
        if not group["decoupled_weight_decay"]:
            # Refuses e.g. an Adam state_dict loaded into AdamW, which would silently switch the
            # rule to coupled decay. (Adam(decoupled_weight_decay=True) is AdamW's rule.)
            raise ValueError("AdamW always decouples weight decay (decoupled_weight_decay=True); "
                             "this param group does not (an Adam state_dict? use fastgd.Adam)")
