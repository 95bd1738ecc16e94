"""Stateful optimizers over NumPy arrays, with torch.optim's API: param groups, step, state_dict.

``params`` is a list of NumPy arrays, or a list of dicts ``{"params": [...], **options}`` (param
groups, options defaulting to the constructor's). ``opt.param_groups`` is mutable, so a schedule
can change ``lr`` between steps (it is checked again at the next step). ``opt.step(grads)`` takes
gradients aligned with the parameters (all groups, in order; ``None`` skips a parameter, as
torch skips ``grad is None``).

Each class is its rule's spec (fastgd/rules/) plus torch.optim's constructor signature, built
from the spec; everything else, once, in fastgd._core: groups, validation before any write,
lazy state, clipping and the non-finite policy, checkpoints, the thread guard.

Options every optimizer takes (keyword-only), held by the optimizer (the norm is over all
parameters) and checked on every assignment (``opt.max_grad_norm = 0.5``):

- ``max_grad_norm=None``: clip by global norm inside the step: one read-only norm pass over all
  gradients, then the update with ``grad_scale * coef``, coef = min(1, max_grad_norm / (total +
  1e-6)); the gradients are not rewritten. ``inf`` measures without clipping.
  ``opt.last_grad_norm`` is the total norm of the last step. A non-finite total skips the step:
  nothing changes and ``opt.skipped_steps`` counts it (fastgd.clipping).
- ``norm_type=2.0``: p of the norm (any p > 0, or inf).
- ``error_if_nonfinite=False``: raise RuntimeError on a non-finite norm instead of skipping.
- ``state_dtype=None``, ``master_weights=False``, ``bf16_stochastic_round=False``,
  ``stochastic_round_seed=0``: how the arrays are stored (bfloat16/float16 params, states in
  another format, a float32 master copy, stochastic rounding; fastgd.formats and the README).
  A group's arrays of one format are stepped by one kernel call.

``params`` may also be a ``fastgd.FlatParams`` (or contain some): each becomes one flat
parameter, so the step is one kernel call over the whole buffer, and ``step()`` without grads
reads the FlatParams' own gradient buffer.

The state of a parameter is ``{"step": int, name: flat array, ...}`` under torch's names
(NAdam's ``mu_product`` a float64 Python float: torch keeps it in a float32 tensor, and
fastgd.torch follows torch's rounding).
"""
import copy
import inspect

import numpy as np

from . import _validate as check
from ._core import FORMAT_OPTIONS, Core, busy, exclusive, lock_of
from .flat import FlatParams
from .rules import SPECS

#: keyword-only options of every optimizer, beside its rule's (fastgd.clipping)
CLIPPING_OPTIONS = {"max_grad_norm": None, "norm_type": 2.0, "error_if_nonfinite": False}


def constructor_signature(spec, fixed=(), overrides=None, extra=()):
    """torch.optim's constructor signature for ``spec``: ``params``, the rule's options in its
    order (positional up to ``maximize``, keyword-only from it on), minus ``fixed``, with
    ``overrides`` of defaults, then keyword-only ``extra`` ((name, default), ...)."""
    P = inspect.Parameter
    params = [P("params", P.POSITIONAL_OR_KEYWORD)]
    kind = P.POSITIONAL_OR_KEYWORD
    for name, default in spec.options:
        if name == "maximize":
            kind = P.KEYWORD_ONLY
        if name in fixed:
            continue
        params.append(P(name, kind, default=(overrides or {}).get(name, default)))
    params += [P(name, P.KEYWORD_ONLY, default=d) for name, d in extra]
    return inspect.Signature(params)


class Optimizer(Core):
    """Base of every fastgd optimizer (see the module docstring); a subclass names its rule's
    ``spec``, and may pin options (``fixed``) or change defaults (``overrides``)."""

    overrides = {}
    format_overrides = {}    # defaults of FORMAT_OPTIONS the class changes (AdamW8bit's optim_bits)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.spec is not None:
            clash = sorted(set(CLIPPING_OPTIONS) & set(cls.spec.defaults))
            if clash:
                raise TypeError(f"{cls.__qualname__}'s rule must not declare {', '.join(clash)}: "
                                "the Optimizer base takes it for every rule")
            cls._signature = constructor_signature(cls.spec, cls.fixed, cls.overrides,
                                                   tuple(CLIPPING_OPTIONS.items())
                                                   + tuple({**FORMAT_OPTIONS,
                                                            **cls.format_overrides}.items()))
            cls.__signature__ = cls._signature

    def __init__(self, params, *args, **kwargs):
        if self.spec is None:
            raise TypeError("fastgd.Optimizer is a base class; use Adam, SGD, ... (fastgd.optim)")
        bound = self._signature.bind(params, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        params = values.pop("params")
        clip = {name: values.pop(name) for name in CLIPPING_OPTIONS}
        formats = {name: values.pop(name) for name in FORMAT_OPTIONS}
        self.defaults = {name: values.get(name, self.fixed.get(name)) for name, _ in self.spec.options}
        self._init_core(formats)
        self._check_group(self.defaults)   # a bad default is named before any group
        self._init_clipping(clip["max_grad_norm"], clip["norm_type"], clip["error_if_nonfinite"])
        self.param_groups = []
        self.state = {}
        self._flat_grads = []   # aligned with the parameters: a FlatParams' grad buffer or None
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
        """Add a group ``{"params": [...], **options}``; missing options take the defaults.
        Checked whole before the group is added."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict; got {type(param_group).__name__}")
        params = param_group.get("params")
        if params is None:
            raise ValueError("a param group needs a 'params' entry")
        params = [params] if isinstance(params, (np.ndarray, FlatParams)) else list(params)
        flat_grads = []
        for i, p in enumerate(params):
            if isinstance(p, FlatParams):
                # one flat parameter over the whole buffer; its grad buffer is step()'s default
                params[i], grad = p.data, p.grad
            else:
                grad = None
            flat_grads.append(grad)
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {type(self).__name__}")
        group = {**self.defaults, **param_group, "params": params}
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            check.array(f"params[{i}]", p, dtypes=check.STORAGE_DTYPES)
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        o = self._check_group(group)
        if "betas" in o:
            group["betas"] = o["betas"]
        self.param_groups.append(group)
        self._flat_grads += flat_grads

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    # --- Core's storage hooks: the state is {index: {"step": int, name: flat array}} ----------

    def _state_get(self, key):
        return self.state.get(key)

    def _state_put(self, key, state):
        self.state[key] = state

    def _new_state(self, slot, name, init, dtype):
        return np.full(slot.s["param"].size, init, dtype)

    @staticmethod
    def _new_raw(slot, name, size, dtype, like_param):
        return np.zeros(size, dtype)

    def _view(self, a, flat, where, dtype, size=None):
        size = flat.size if size is None else size
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.size != size:
            raise ValueError(f"{where} must be an array of {size} {dtype} (the parameter's "
                             f"state format); got {type(a).__name__}"
                             + (f" of {a.size} {a.dtype}" if isinstance(a, np.ndarray) else ""))
        if dtype not in check.STORAGE_DTYPES:      # a quantized state's codes
            return check.array(where, a, dtypes=(dtype,))
        return check.array(where, a, dtypes=check.STORAGE_DTYPES)

    @staticmethod
    def _zero_step():
        return 0

    @staticmethod
    def _new_scalar(value):
        return float(value)

    @staticmethod
    def _advance(slot):
        state = slot.store
        t = state["step"] = state["step"] + 1
        return t

    def _scalars_of(self, slot):
        return {name: slot.store[name] for name, _, _ in self.spec.scalar_state}

    def _store_scalars(self, slot, values):
        slot.store.update(values)

    # --- the step -------------------------------------------------------------------------------

    def step(self, grads=None, *, grad_scale=1.0, grad_acc=None):
        """Update every parameter in place from ``grads`` (aligned with the parameters).

        ``grad_scale`` multiplies every gradient as it is read (loss scaling, accumulation
        averaging, the clipping coefficient) without an extra pass over memory. ``grads`` may be
        omitted when every parameter came from a FlatParams: its gradient buffer is used.
        ``grad_acc`` (aligned with ``grads``, None entries allowed): accumulated gradients that
        the step adds to the gradient as it reads it, ``g = grad_scale * (grad_acc + grad)``,
        and resets to zero in the same pass (the last micro-batch of gradient accumulation;
        MultiSteps uses it). Everything is checked before anything is written.
        """
        # the thread guard of _core.exclusive, written out: the wrapper's frame costs 0.5 us
        lock = self.__dict__.get("_busy") or lock_of(self)
        if not lock.acquire(False):
            raise busy(self, "step")
        try:
            if grad_scale != 1.0 or type(grad_scale) is not float:
                grad_scale = check.finite("grad_scale", grad_scale)
            work, accs = self._gather(self.default_grads() if grads is None else grads, grad_acc)
            self._run(work, grad_scale, accs)
        finally:
            lock.release()

    def default_grads(self):
        """The gradient buffers of the FlatParams the parameters came from (step() without grads)."""
        grads = self._flat_grads
        if any(g is None for g in grads):
            raise TypeError("step() needs grads: only parameters given as a FlatParams have a "
                            "gradient buffer to default to")
        return grads

    def _gather(self, grads, grad_acc=None):
        """Check every parameter, gradient and group before any write: ([(prep, slot, flat
        grad)], flat accumulators aligned with it or None)."""
        if isinstance(grads, np.ndarray):
            raise TypeError("grads must be a list of arrays aligned with the parameters, not one array; "
                            "wrap it: [grad]")
        grads = grads if type(grads) is list else list(grads)
        n = len(self._flat_grads)
        if len(grads) != n:
            raise ValueError(f"got {len(grads)} gradients for {n} parameters")
        if grad_acc is not None:
            grad_acc = list(grad_acc)
            if len(grad_acc) != n:
                raise ValueError(f"got {len(grad_acc)} accumulators (grad_acc) for {n} parameters")
        work, accs = [], None if grad_acc is None else []
        index = 0
        for group in self.param_groups:
            prep = self._prep(group)
            for p in group["params"]:
                g = grads[index]
                if g is not None:
                    slot = self._slots.get(index)
                    if slot is None or slot.param is not p:
                        flags = p.flags
                        if not (type(p) is np.ndarray and flags.c_contiguous and flags.writeable
                                and p.dtype in check.STORAGE_DTYPES):
                            check.array(f"params[{index}]", p, dtypes=check.STORAGE_DTYPES)
                        pf = p.reshape(-1)
                    else:
                        pf = slot.s["param"]
                    slot = self._slot(index, p, pf, prep, f"params[{index}]" if slot is None
                                      else slot.where)
                    # all at once in C (type, dtype, shape, layout, no shared memory with the
                    # param or its state); else one by one, naming what is wrong
                    gf = g if type(g) is np.ndarray and g.shape == p.shape and g.ndim == 1 else None
                    if gf is None or not check.valid((gf, *slot.views), 0, True):
                        gf = check.matching(f"grads[{index}]", g, p)
                        self._checked_grad(slot, gf, f"params[{index}] (grads[{index}])")
                    if accs is not None:
                        a = grad_acc[index]
                        if a is not None:
                            a = check.matching(f"grad_acc[{index}]", a, p, writable=True)
                            lo, hi = check.span(a)
                            if any(lo < y and x < hi for x, y in slot.spans + [check.span(gf)]):
                                raise ValueError(f"grad_acc[{index}] shares memory with its "
                                                 "parameter, gradient or state")
                        accs.append(a)
                    work.append((prep, slot, gf))
                index += 1
        if accs is not None and all(a is None for a in accs):
            accs = None
        return work, accs

    def zero_grad(self):
        """Zero the gradient buffers of the FlatParams the parameters came from (NumPy gradients
        are the caller's arrays: nothing else to zero)."""
        for g in self._flat_grads:
            if g is not None:
                g.fill(0)

    # --- checkpoints ----------------------------------------------------------------------------

    @exclusive
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

    @exclusive
    def load_state_dict(self, state_dict):
        """Restore a snapshot from ``state_dict()``; checked whole before anything changes
        (another optimizer's state_dict, or one of other options' state, is refused)."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'")
        if not isinstance(state_dict["state"], dict):
            raise ValueError("state_dict['state'] must be a dict {parameter index: state dict}")
        saved_groups = state_dict["param_groups"]
        checked = self._checked_groups(saved_groups, self.param_groups, self.defaults)
        params = self._params()
        order = [i for saved in saved_groups for i in saved["params"]]
        saved_to_mine = dict(zip(order, range(len(params))))
        options_of = [o for (saved, o) in checked for _ in saved["params"]]
        new_state = {}
        for key, s in state_dict["state"].items():
            if isinstance(key, bool) or key not in saved_to_mine:
                raise ValueError(f"state_dict has state for parameter {key!r}, which no group lists")
            i = saved_to_mine[key]
            p = params[i]
            loaded = self._checked_param_state(s, options_of[i], p.shape, p.dtype,
                                               f"state of parameter {key}", np.asarray)
            for name, v in loaded.items():
                if isinstance(v, np.ndarray):
                    want = self.expected_dtype(options_of[i], p.dtype, name, p.size)
                    loaded[name] = np.array(v, dtype=want, order="C").reshape(-1)
            new_state[i] = loaded
        new_groups = []
        for group, (saved, o) in zip(self.param_groups, checked):
            g = {**group, **{k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}}
            g["params"] = group["params"]
            if "betas" in o:
                g["betas"] = o["betas"]
            new_groups.append(g)
        self.param_groups[:] = new_groups
        self.state = new_state
        self._slots.clear()
        self._preps.clear()

    def __getstate__(self):
        # Pickle (multiprocessing 'spawn'/'forkserver', copy.deepcopy) without the step lock and
        # the caches, which are keyed by id() of this process or hold views of its arrays.
        state = dict(self.__dict__)
        state.pop("_busy", None)
        state["_slots"], state["_preps"] = {}, {}
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
    spec = SPECS["adam"]
    __doc__ = spec.docstring("Adam (Kingma & Ba 2015) with torch.optim.Adam's arguments and "
                             "defaults; AMSGrad with amsgrad=True.")


class AdamW(Adam):
    fixed = {"decoupled_weight_decay": True}
    overrides = {"weight_decay": 1e-2}
    __doc__ = Adam.spec.docstring("AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight "
                                  "decay, as torch.optim.AdamW (default weight_decay 1e-2).")


class SGD(Optimizer):
    spec = SPECS["sgd"]
    __doc__ = spec.docstring("Stochastic gradient descent with momentum, as torch.optim.SGD.")


class Adagrad(Optimizer):
    spec = SPECS["adagrad"]
    __doc__ = spec.docstring("Adagrad (Duchi et al. 2011), as torch.optim.Adagrad.")


class RMSprop(Optimizer):
    spec = SPECS["rmsprop"]
    __doc__ = spec.docstring("RMSprop (Hinton 2012; centered: Graves 2013), as torch.optim.RMSprop.")


class Adamax(Optimizer):
    spec = SPECS["adamax"]
    __doc__ = spec.docstring("Adamax (Kingma & Ba 2015, section 7), as torch.optim.Adamax.")


class NAdam(Optimizer):
    spec = SPECS["nadam"]
    __doc__ = spec.docstring("NAdam (Dozat 2016), as torch.optim.NAdam; NAdamW with "
                             "decoupled_weight_decay=True.",
                             "mu_product is kept as a float64 Python float (fastgd.torch keeps "
                             "torch's float32, rounded every step).")


class RAdam(Optimizer):
    spec = SPECS["radam"]
    __doc__ = spec.docstring("RAdam (Liu et al. 2020), as torch.optim.RAdam; RAdamW with "
                             "decoupled_weight_decay=True.")


class Lion(Optimizer):
    spec = SPECS["lion"]
    __doc__ = spec.docstring('Lion (Chen et al. 2023, "Symbolic Discovery of Optimization '
                             'Algorithms"); torch has none.')


# --- quantized states under bitsandbytes' and torchao's names (fastgd.torch has the same) ------

_BITS_NOTE = ("States of parameters of at least min_8bit_size elements are quantized block-wise "
              "(fastgd/quant.py: bitsandbytes' 8-bit format, blocks of 256 with a float32 absmax; "
              "4-bit: blocks of 128), dequantized, updated and quantized again in the step's one "
              "pass; smaller ones keep float32 states (state_dtype).")


class AdamW8bit(AdamW):
    format_overrides = {"optim_bits": 8}
    __doc__ = Adam.spec.docstring("bitsandbytes' AdamW8bit: AdamW with 8-bit states.", _BITS_NOTE)


class Adam8bit(AdamW):
    format_overrides = {"optim_bits": 8}
    overrides = {"weight_decay": 0.0}
    __doc__ = Adam.spec.docstring("bitsandbytes' Adam8bit: its kernel decays weights decoupled, "
                                  "as AdamW (default weight_decay 0); 8-bit states.", _BITS_NOTE)


class SGD8bit(SGD):
    format_overrides = {"optim_bits": 8}
    __doc__ = SGD.spec.docstring("bitsandbytes' SGD8bit: an 8-bit momentum buffer.", _BITS_NOTE)


class Lion8bit(Lion):
    format_overrides = {"optim_bits": 8}
    __doc__ = Lion.spec.docstring("bitsandbytes' Lion8bit: an 8-bit momentum.", _BITS_NOTE)


class RMSprop8bit(RMSprop):
    format_overrides = {"optim_bits": 8}
    __doc__ = RMSprop.spec.docstring("bitsandbytes' RMSprop8bit: an 8-bit square average.",
                                     _BITS_NOTE)


class Adagrad8bit(Adagrad):
    format_overrides = {"optim_bits": 8}
    __doc__ = Adagrad.spec.docstring("bitsandbytes' Adagrad8bit: an 8-bit sum of squares.",
                                     _BITS_NOTE)


class AdamW4bit(AdamW):
    format_overrides = {"optim_bits": 4}
    __doc__ = Adam.spec.docstring("torchao's AdamW4bit: AdamW with 4-bit states (the second "
                                  "moment on a linear map without zero).", _BITS_NOTE)


class Adam4bit(Adam):
    format_overrides = {"optim_bits": 4}
    __doc__ = Adam.spec.docstring("torchao's Adam4bit: Adam (coupled weight decay) with 4-bit "
                                  "states.", _BITS_NOTE)
