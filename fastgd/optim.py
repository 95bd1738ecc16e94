"""Stateful optimizers with torch.optim's API: param groups, step, state_dict.

``params`` is a list of NumPy arrays, or a list of dicts ``{"params": [...], **options}`` (param
groups, options defaulting to the constructor's). ``opt.param_groups`` is mutable, so a schedule
can change ``lr`` between steps. ``opt.step(grads)`` takes gradients aligned with the parameters
(all groups, in order; ``None`` skips a parameter, as torch skips ``grad is None``).

A subclass names its kernel and declares its options and its state arrays; this base does
everything else once: grouping, validation before any write (each option by its entry in
fastgd._validate.OPTION_CHECKS), lazy state creation, dispatch to the active backend,
global-norm clipping, and checkpoints.

Options of the base, taken by every optimizer's constructor (keyword-only) without the subclass
listing them, and held by the optimizer (not per group: the norm is over all parameters):

- ``max_grad_norm=None``: clip by global norm inside the step. ``step(grads)`` first runs one
  read-only norm pass over all gradients, then the update with ``grad_scale * coef``,
  coef = min(1, max_grad_norm / (total + 1e-6)) (torch.nn.utils.clip_grad_norm_'s rule); the
  gradients are not rewritten. ``opt.last_grad_norm`` is the total norm of the last step (of the
  gradient as the update sees it, grad_scale included). ``inf`` measures without clipping.
  A non-finite total norm skips the step: nothing changes (parameters, state, step counts) and
  ``opt.skipped_steps`` counts it (torch's GradScaler, optax's apply_if_finite).
- ``norm_type=2.0``: p of the norm (any p > 0, or inf).
- ``error_if_nonfinite=False``: raise RuntimeError on a non-finite norm instead of skipping.

They can be changed between steps (``opt.max_grad_norm = 0.5``) and are not part of state_dict
(constructor configuration, as torch keeps them out of param_groups).

``params`` may also be a ``fastgd.FlatParams`` (or contain some): each becomes one flat
parameter, so the step is one kernel call over the whole buffer, and ``step()`` without grads
reads the FlatParams' own gradient buffer.
"""
import copy
import functools
import inspect
import math
import threading

import numpy as np

from . import _validate as check
from .backends import kernel
from .flat import FlatParams
from .functional import _clip_coef, _combine

#: keyword-only options of every optimizer that the base class takes (see module docstring)
BASE_OPTIONS = {"max_grad_norm": None, "norm_type": 2.0, "error_if_nonfinite": False}


def _with_base_options(init):
    """Wrap a subclass's __init__ so that it also takes BASE_OPTIONS as keyword-only arguments.

    The subclass's own signature and body stay as they are; the wrapper checks the base options
    first, runs the subclass's __init__ without them, then sets them on the optimizer.
    """
    @functools.wraps(init)
    def __init__(self, *args, max_grad_norm=None, norm_type=2.0, error_if_nonfinite=False, **kwargs):
        clip = _check_clipping(max_grad_norm, norm_type, error_if_nonfinite)
        init(self, *args, **kwargs)
        self.max_grad_norm, self.norm_type, self.error_if_nonfinite = clip

    sig = inspect.signature(init)
    clash = sorted(set(BASE_OPTIONS) & set(sig.parameters))
    if clash:
        raise TypeError(f"{init.__qualname__} must not declare {', '.join(clash)}: the Optimizer base "
                        "class takes it for every subclass")
    params = [q for q in sig.parameters.values() if q.kind is not q.VAR_KEYWORD]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in BASE_OPTIONS.items()]
    var_kw = [q for q in sig.parameters.values() if q.kind is q.VAR_KEYWORD]
    __init__.__signature__ = sig.replace(parameters=params + extra + var_kw)
    __init__._fastgd_base_options = True
    return __init__


def _check_clipping(max_grad_norm, norm_type, error_if_nonfinite):
    if max_grad_norm is not None:
        max_grad_norm = check.max_norm("max_grad_norm", max_grad_norm)
    return max_grad_norm, check.norm_type(norm_type), check.flag("error_if_nonfinite", error_if_nonfinite)


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

    #: options that hold numbers/flags; subclasses list theirs (their constructor's arguments)
    defaults = {}

    #: the check of each option, by name (see _check_group); a subclass with an option of its own
    #: extends it: ``option_checks = {**check.OPTION_CHECKS, "my_option": check.positive}``
    option_checks = check.OPTION_CHECKS

    def __init_subclass__(cls, **kwargs):
        # Every subclass's constructor takes the base options (BASE_OPTIONS) without listing them.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_fastgd_base_options", False):
            cls.__init__ = _with_base_options(init)

    def __init__(self, params, **defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._checked = {}
        self._flat_grads = {}
        self._max_grad_norm, self._norm_type, self._error_if_nonfinite = None, 2.0, False
        #: total gradient norm of the last step (None until a step ran with max_grad_norm set)
        self.last_grad_norm = None
        #: steps skipped because the gradient norm was not finite (max_grad_norm set)
        self.skipped_steps = 0
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param-group dicts, not one array; "
                            "wrap it: [param]")
        if isinstance(params, FlatParams):
            params = [params]
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
        params = [params] if isinstance(params, (np.ndarray, FlatParams)) else list(params)
        flat_grads = {}
        for i, p in enumerate(params):
            if isinstance(p, FlatParams):
                # One flat parameter over the whole buffer; its grad buffer is step()'s default.
                params[i] = p.data
                flat_grads[id(p.data)] = p.grad
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
        self._flat_grads.update(flat_grads)

    def _check_group(self, group):
        """Check a group's options, raising a TypeError/ValueError that names the option; return
        the checked values {name: value}.

        Every option in ``defaults`` is checked, in the constructor's order, by its entry in
        ``option_checks``; betas is normalised in place (a pair of floats). A subclass with a rule
        across options (SGD's nesterov) extends this and checks the rule on the returned values.
        """
        checks = self.option_checks
        try:
            values = {name: checks[name](name, group[name]) for name in self.defaults}
        except KeyError:
            unchecked = [name for name in self.defaults if name not in checks]
            if not unchecked:
                raise
            raise TypeError(f"{type(self).__name__} has no check for its option {unchecked[0]!r}; "
                            "add one to its option_checks") from None
        if "betas" in values:
            group["betas"] = values["betas"]
        return values

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

    # --- base options: global-norm clipping --------------------------------------------------

    @property
    def max_grad_norm(self):
        """Clip the global gradient norm to this inside the step (None: no norm pass)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = None if value is None else check.max_norm("max_grad_norm", value)

    @property
    def norm_type(self):
        """p of the clipping norm (> 0, or inf)."""
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value):
        self._norm_type = check.norm_type(value)

    @property
    def error_if_nonfinite(self):
        """Raise RuntimeError (instead of skipping the step) on a non-finite gradient norm."""
        return self._error_if_nonfinite

    @error_if_nonfinite.setter
    def error_if_nonfinite(self, value):
        self._error_if_nonfinite = check.flag("error_if_nonfinite", value)

    # --- the step -------------------------------------------------------------------------------

    @_exclusive
    def step(self, grads=None, *, grad_scale=1.0):
        """Update every parameter in place from ``grads`` (aligned with the parameters).

        ``grad_scale`` multiplies every gradient as it is read (loss scaling, accumulation
        averaging) without an extra pass over memory. ``grads`` may be omitted when every
        parameter came from a FlatParams: its gradient buffer is used. With ``max_grad_norm``
        set, the step is clipped (or skipped on a non-finite norm; module docstring).
        """
        if grad_scale != 1.0:
            grad_scale = check.finite("grad_scale", grad_scale)
        self._step(self._gather(self._flat_grad_list() if grads is None else grads), grad_scale)

    def _flat_grad_list(self):
        """The gradient buffers of the FlatParams the parameters came from (step() without grads)."""
        grads = [self._flat_grads.get(id(p)) for p in self._params()]
        if any(g is None for g in grads):
            raise TypeError("step() needs grads: only parameters given as a FlatParams have a "
                            "gradient buffer to default to")
        return grads

    def _step(self, work, grad_scale, accs=None):
        """Clip (if max_grad_norm is set), then run the kernels over checked ``work``.

        Returns False when the step was skipped for a non-finite gradient norm (nothing changed).
        """
        if self._max_grad_norm is not None:
            total = self._grad_norm(work, accs) * abs(grad_scale)
            self.last_grad_norm = total
            if not math.isfinite(total):
                if self._error_if_nonfinite:
                    raise RuntimeError(f"the total gradient norm of order {self._norm_type} is non-finite "
                                       f"({total}); step not taken (error_if_nonfinite=True)")
                self.skipped_steps += 1
                return False
            grad_scale = grad_scale * _clip_coef(total, self._max_grad_norm)
        self._apply(work, grad_scale, accs)
        return True

    def _grad_norm(self, work, accs=None):
        """Global norm of the gradients of ``work`` (plus ``accs[i]`` where given), before grad_scale."""
        partial = kernel("norm_partial")
        p = self._norm_type
        parts = []
        for i, (_, _, _, g) in enumerate(work):
            acc = None if accs is None else accs[i]
            parts.append(partial(g, g if acc is None else acc, acc is not None, p))
        return _combine(parts, p)

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
        """Names of the state a parameter needs under this group's options.

        Subclasses list them; one that overrides only ``_init_state`` gets them from it.
        """
        if type(self)._init_state is Optimizer._init_state:
            raise NotImplementedError(f"{type(self).__name__} must define _state_keys or _init_state")
        return [k for k in self._init_state(group, np.empty(0)) if k != "step"]

    def _init_state(self, group, p):
        """Fresh state for a parameter: ``step`` = 0 and a flat zero array of its dtype per state
        name. Subclasses whose state does not start at zero (Adagrad, NAdam) override this."""
        return {"step": 0, **{name: np.zeros(p.size, p.dtype) for name in self._state_keys(group)}}

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
        fresh = self._init_state(group, np.empty(0, p.dtype))
        expected = set(fresh)
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
            if isinstance(fresh[k], float):
                # Scalar state other than the step (NAdam's mu_product): a finite Python float.
                if isinstance(v, np.ndarray) and v.size == 1:
                    v = v.item()
                out[k] = check.finite(f"state {k!r} of parameter {index}", v)
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

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

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
        values = super()._check_group(group)
        if not values["decoupled_weight_decay"]:
            # Refuses e.g. an Adam state_dict loaded into AdamW, which would silently switch the
            # rule to coupled decay. (Adam(decoupled_weight_decay=True) is AdamW's rule.)
            raise ValueError("AdamW always decouples weight decay (decoupled_weight_decay=True); "
                             "this param group does not (an Adam state_dict? use fastgd.Adam)")
        return values


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD.

    g += weight_decay * p
    momentum: buf = g at its first step, else buf = momentum * buf + (1 - dampening) * g
              g = g + momentum * buf (nesterov) | g = buf
    p -= lr * g
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False):
        # Momentum buffers created mid-run (momentum switched on after the first step), by id:
        # like torch's buffer that is None until its first step, they start as buf = g. The dict
        # holds the arrays, so an id cannot be reused by another array while it is pending.
        self._fresh_buffers = {}
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)

    def _check_group(self, group):
        values = super()._check_group(group)
        check.nesterov_momentum(values["nesterov"], values["momentum"], values["dampening"])
        return values

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _complete_state(self, group, state, p):
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = np.zeros(p.size, p.dtype)
            self._fresh_buffers[id(buf)] = buf

    def _update(self, group, state, p, g, grad_scale, acc):
        buf = state.get("momentum_buffer")
        first = state["step"] == 1
        if buf is not None and self._fresh_buffers and self._fresh_buffers.pop(id(buf), None) is buf:
            first = True
        kernel("sgd")(p, g, p if acc is None else acc, p if buf is None else buf, grad_scale,
                      group["maximize"], acc is not None, float(group["lr"]),
                      float(group["momentum"]), float(group["dampening"]),
                      float(group["weight_decay"]), group["nesterov"], first)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._fresh_buffers.clear()  # the loaded buffers carry their history


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), as torch.optim.Adagrad.

    g += weight_decay * p;  sum += g^2;  p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)
    The sum starts at initial_accumulator_value.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         maximize=maximize)

    def _state_keys(self, group):
        return ("sum",)

    def _init_state(self, group, p):
        return {"step": 0, "sum": np.full(p.size, group["initial_accumulator_value"], p.dtype)}

    def _update(self, group, state, p, g, grad_scale, acc):
        clr = float(group["lr"]) / (1.0 + (state["step"] - 1) * float(group["lr_decay"]))
        kernel("adagrad")(p, g, p if acc is None else acc, state["sum"], grad_scale,
                          group["maximize"], acc is not None, clr, float(group["weight_decay"]),
                          float(group["eps"]))


class RMSprop(Optimizer):
    """RMSprop (Hinton 2012; centered: Graves 2013), as torch.optim.RMSprop.

    g += weight_decay * p;  square_avg = alpha * square_avg + (1 - alpha) * g^2
    centered: grad_avg = alpha * grad_avg + (1 - alpha) * g;  d = sqrt(square_avg - grad_avg^2) + eps
    else d = sqrt(square_avg) + eps
    momentum > 0: momentum_buffer = momentum * momentum_buffer + g / d;  p -= lr * momentum_buffer
    else p -= lr * g / d
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize)

    def _state_keys(self, group):
        return (("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ())
                + (("grad_avg",) if group["centered"] else ()))

    def _update(self, group, state, p, g, grad_scale, acc):
        sq = state["square_avg"]
        momentum = float(group["momentum"])
        centered = group["centered"]
        kernel("rmsprop")(p, g, p if acc is None else acc, sq,
                          state["momentum_buffer"] if momentum > 0 else sq,
                          state["grad_avg"] if centered else sq, grad_scale, group["maximize"],
                          acc is not None, float(group["lr"]), float(group["alpha"]),
                          float(group["eps"]), float(group["weight_decay"]), momentum, centered)


class Adamax(Optimizer):
    """Adamax (Kingma & Ba 2015, section 7), as torch.optim.Adamax.

    g += weight_decay * p;  m = beta1 * m + (1 - beta1) * g;  u = max(beta2 * u, |g| + eps)
    p -= lr / (1 - beta1^t) * m / u          (state: exp_avg = m, exp_inf = u)
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize)

    def _state_keys(self, group):
        return ("exp_avg", "exp_inf")

    def _update(self, group, state, p, g, grad_scale, acc):
        beta1, beta2 = group["betas"]
        kernel("adamax")(p, g, p if acc is None else acc, state["exp_avg"], state["exp_inf"],
                         grad_scale, group["maximize"], acc is not None, float(group["lr"]), beta1,
                         beta2, float(group["eps"]), float(group["weight_decay"]),
                         1.0 - beta1 ** state["step"])


class NAdam(Optimizer):
    """NAdam (Dozat 2016), as torch.optim.NAdam; NAdamW with decoupled_weight_decay=True.

    mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  mu_product = mu_1 ... mu_t (state)
    g += weight_decay * p  |  p *= 1 - lr * weight_decay (decoupled)
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2;  d = sqrt(v / (1 - beta2^t)) + eps
    p -= lr * (1 - mu_t) / (1 - mu_1..mu_t) * g / d + lr * mu_{t+1} / (1 - mu_1..mu_{t+1}) * m / d
    mu_product is kept in float64 (torch keeps it in a tensor of the default dtype, float32).
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)

    def _state_keys(self, group):
        return ("mu_product", "exp_avg", "exp_avg_sq")

    def _init_state(self, group, p):
        return {"step": 0, "mu_product": 1.0, "exp_avg": np.zeros(p.size, p.dtype),
                "exp_avg_sq": np.zeros(p.size, p.dtype)}

    def _update(self, group, state, p, g, grad_scale, acc):
        from .functional import nadam_coefficients
        t = state["step"]
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        grad_coef, avg_coef, mu_product = nadam_coefficients(
            t, state["mu_product"], lr, beta1, float(group["momentum_decay"]))
        kernel("nadam")(p, g, p if acc is None else acc, state["exp_avg"], state["exp_avg_sq"],
                        grad_scale, group["maximize"], acc is not None, lr, beta1, beta2,
                        float(group["eps"]), float(group["weight_decay"]),
                        group["decoupled_weight_decay"], grad_coef, avg_coef, 1.0 - beta2 ** t)
        state["mu_product"] = mu_product


class RAdam(Optimizer):
    """RAdam (Liu et al. 2020), as torch.optim.RAdam; RAdamW with decoupled_weight_decay=True.

    g += weight_decay * p  |  p *= 1 - lr * weight_decay (decoupled)
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    rho_t > 5: p -= lr * rect_t * m / (1 - beta1^t) * sqrt(1 - beta2^t) / (sqrt(v) + eps)
    else:      p -= lr * m / (1 - beta1^t)      (rho_t, rect_t: fastgd.functional.radam_rectification)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _update(self, group, state, p, g, grad_scale, acc):
        from .functional import radam_rectification
        t = state["step"]
        beta1, beta2 = group["betas"]
        adaptive, rect = radam_rectification(t, beta2)
        kernel("radam")(p, g, p if acc is None else acc, state["exp_avg"], state["exp_avg_sq"],
                        grad_scale, group["maximize"], acc is not None, float(group["lr"]), beta1,
                        beta2, float(group["eps"]), float(group["weight_decay"]),
                        group["decoupled_weight_decay"], 1.0 - beta1 ** t, 1.0 - beta2 ** t,
                        adaptive, rect)


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"); torch has none.

    c = beta1 * m + (1 - beta1) * g;  p = p * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g          (state: exp_avg = m)
    Use an lr 3-10x smaller and a weight_decay 3-10x larger than for AdamW (the paper's advice).
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)

    def _state_keys(self, group):
        return ("exp_avg",)

    def _update(self, group, state, p, g, grad_scale, acc):
        beta1, beta2 = group["betas"]
        kernel("lion")(p, g, p if acc is None else acc, state["exp_avg"], grad_scale,
                       group["maximize"], acc is not None, float(group["lr"]), beta1, beta2,
                       float(group["weight_decay"]))
