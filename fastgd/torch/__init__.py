"""Drop-in ``torch.optim`` optimizers that step CPU tensors with fastgd's fused kernels.

    import fastgd.torch as ft
    opt = ft.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, max_grad_norm=1.0)
    loss.backward(); opt.step(); opt.zero_grad()

Every class subclasses ``torch.optim.Optimizer`` with the constructor arguments and defaults of
its torch.optim namesake (Lion, which torch lacks, follows lion-pytorch), so param groups,
``add_param_group``, ``step(closure)``, ``zero_grad``, hooks, ``torch.optim.lr_scheduler`` and
``state_dict``/``load_state_dict`` work as with torch. The state holds torch tensors under
torch's names and layout (``step`` a float32 scalar tensor), so a checkpoint of
``torch.optim.AdamW`` loads into ``ft.AdamW`` and the other way round.

Each class is its rule's spec (fastgd/rules/) on the one optimizer core (fastgd._core), the
same as fastgd.optim's: the same option checks (after torch.optim's own constructor checks, so
what torch refuses raises torch's error), the same state, step scalars and kernel call, the same
clipping policy and checkpoint checks. The update is zero-copy: parameters, gradients and state
are viewed as NumPy arrays (``Tensor.numpy()`` shares memory) and updated in place by one fused
pass per tensor; a non-contiguous parameter is stepped through a contiguous copy.

A param group's tensors of one storage format are one kernel call. After a group's first step
the optimizer keeps the call's table of addresses (fastgd._core.Table), and each later step
checks in a few C-level passes over the group that it still holds (the same parameters, data
addresses and state entries, plain contiguous gradients of the parameters' dtypes and shapes
sharing no memory with them): ~1 us of Python a tensor instead of ~5. Anything else (new
parameter data, a loaded state_dict, a gradient of another dtype, ...) takes the full checks
again, which name what is wrong. The tensors' ``state["step"]`` are then views of one float32
tensor per group (as with ``flatten=True``), advanced together.

Options beyond torch's (keyword-only, every class):

* ``flatten=True``: the parameters are moved into one contiguous buffer per param group and
  dtype (each ``param.data`` becomes a view of it), and so are their gradients and the state;
  one kernel call then steps the whole group, however many tensors it has. ``zero_grad()`` zeroes
  that gradient buffer in place (so the next ``backward`` accumulates into it) whatever
  ``set_to_none`` says; parameters that never had a gradient keep ``grad is None`` and are
  skipped, as torch skips them. Replace parameter data (``.to()``, ``p.data = ...``) and the
  optimizer refuses to step: create it again.
* ``max_grad_norm``: clip the gradients to this global norm (``norm_type``, default 2) in the
  same pass as the update, as ``torch.nn.utils.clip_grad_norm_`` followed by ``step()`` would,
  without rewriting the gradients (``.grad`` is left unclipped). The norm is fastgd's
  deterministic one; the norm before clipping of the last step is ``opt.last_grad_norm``.
  A non-finite norm skips the step and counts it in ``opt.skipped_steps`` (torch would write
  NaNs into the parameters); ``error_if_nonfinite=True`` raises instead; nothing changes either
  way. ``inf`` measures without clipping.

What it refuses, with a message: tensors not on the CPU (CUDA, MPS, ...), complex or
half/bfloat16 parameters, sparse gradients, ``differentiable=True`` and ``capturable=True``,
a gradient or state tensor sharing memory with its parameter or each other, and option values
fastgd refuses though torch accepts them (the message says why).
Parameters whose ``grad`` is None are skipped.
"""
import inspect
import operator

import numpy as np
import torch

from .. import _validate as check
from .. import functional as F
from .. import formats
from .._core import FORMAT_OPTIONS, Core, Slot, Table, busy, exclusive, lock_of
from ..flat import FlatParams
from ..optim import constructor_signature
from ..rules import SPECS
from ._step_wrapper import lean_step

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Lion",
           "clip_grad_norm_", "Adam8bit", "AdamW8bit", "SGD8bit", "Lion8bit", "RMSprop8bit",
           "Adagrad8bit", "AdamW4bit", "Adam4bit"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _np(t):
    """The NumPy view of a CPU tensor (shared memory), bfloat16 as ml_dtypes.bfloat16 (torch's
    .numpy() refuses bfloat16); raises RuntimeError/TypeError as .numpy() does."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(formats.bfloat16)
    return t.numpy()


# --- checks --------------------------------------------------------------------------------------

def _check_tensor(t, what, optimizer):
    """Refuse (before any write) a tensor fastgd cannot update in place through a NumPy view."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{optimizer}: {what} must be a torch.Tensor; got {type(t).__name__}")
    if not t.is_cpu:
        raise RuntimeError(f"{optimizer}: {what} is on device {t.device}; fastgd.torch optimizers "
                           "step CPU tensors only (use torch.optim for CUDA/MPS tensors)")
    if t.layout != torch.strided:
        raise RuntimeError(f"{optimizer}: {what} has layout {t.layout}; fastgd.torch does not "
                           "support sparse tensors or gradients")
    if t.is_complex():
        raise TypeError(f"{optimizer}: {what} is complex ({t.dtype}); fastgd.torch supports "
                        "float32 and float64 only")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{optimizer}: {what} has dtype {t.dtype}; fastgd.torch supports float32, "
                        "float64, bfloat16 and float16")


def _check_param(p, what, optimizer):
    _check_tensor(p, what, optimizer)
    if not p.is_contiguous():
        raise ValueError(f"{optimizer}: {what} (shape {tuple(p.shape)}, strides {p.stride()}) is not "
                         "contiguous; it is updated in place through a view and cannot be")


def _grad_tensor(p, g, what, optimizer):
    """The gradient of ``p``, checked, detached and contiguous (a copy only if it was not)."""
    _check_tensor(g, f"the gradient of {what}", optimizer)
    if g.dtype != p.dtype:
        raise TypeError(f"{optimizer}: the gradient of {what} has dtype {g.dtype} but the parameter "
                        f"has {p.dtype}")
    if g.shape != p.shape:
        raise ValueError(f"{optimizer}: the gradient of {what} has shape {tuple(g.shape)} but the "
                         f"parameter has {tuple(p.shape)}")
    if g.requires_grad:  # backward(create_graph=True)
        g = g.detach()
    if not g.is_contiguous():
        g = g.contiguous()
    return g


def _scalar_array(t, name, what, optimizer):
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.device.type != "cpu" \
            or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{optimizer}: state {name!r} of {what} must be a float scalar CPU tensor; "
                         f"got {t!r}")
    return t.detach().numpy().reshape(())


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """``torch.nn.utils.clip_grad_norm_`` on fastgd kernels, with a deterministic norm.

    total = norm of all gradients together; every gradient is scaled in place by
    min(1, max_norm / (total + 1e-6)). Returns ``total`` as a scalar tensor. Gradients must be
    CPU float32/float64 tensors (``grad is None`` is skipped). ``foreach`` is accepted and ignored.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    arrays = []
    for i, g in enumerate(grads):
        _check_param(g, f"gradient {i}", "clip_grad_norm_")
        arrays.append(g.detach().numpy())
    total = F.clip_grad_norm_(arrays, _plain(max_norm, "max_norm"), norm_type=_plain(norm_type, "norm_type"),
                              error_if_nonfinite=error_if_nonfinite)
    return torch.tensor(total, dtype=grads[0].dtype)


# --- flat buffers --------------------------------------------------------------------------------

class _Flat:
    """Parameters of one group and dtype packed into one ``fastgd.FlatParams`` (the flat layout of
    the NumPy front end, so there is one), seen by torch through ``torch.from_numpy``: each
    ``param.data`` and ``param.grad`` is a view of its buffers; the state is packed likewise."""

    def __init__(self, params, dtype):
        self.params = params
        self.dtype = dtype
        self.layout = FlatParams.zeros([tuple(p.shape) for p in params], _NP_DTYPE[dtype])
        self._link()
        self.state = {}       # name -> flat tensor like data
        self.scalars = {}     # name -> float32 tensor, one element per parameter
        self.ready = frozenset()  # state names every parameter has (as views of the flat buffers)
        self._pack()

    def _link(self):
        """The torch and NumPy faces of the layout's buffers (they share its memory)."""
        self.offsets = list(self.layout.offsets)
        self.np_data, self.np_grad = self.layout.data, self.layout.grad
        self.data, self.grad = torch.from_numpy(self.np_data), torch.from_numpy(self.np_grad)
        self.grad_views = [self.grad[lo:hi].view(p.shape)
                           for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:])]

    def _pack(self):
        """Make every parameter (and its gradient) a view of the buffers, values unchanged."""
        with torch.no_grad():
            for p, view, lo, hi in zip(self.params, self.grad_views, self.offsets, self.offsets[1:]):
                if p.data_ptr() != self.data[lo:hi].data_ptr() or p.numel() == 0:
                    self.data[lo:hi].copy_(p.detach().reshape(-1))
                    p.data = self.data[lo:hi].view(p.shape)
                if p.grad is not None and p.grad is not view:
                    view.copy_(p.grad)
                    p.grad = view
        self.ptrs = [p.data_ptr() for p in self.params]
        self.np_state = {k: t.numpy() for k, t in self.state.items()}
        self.np_scalars = {k: t.numpy() for k, t in self.scalars.items()}

    def slot(self, i):
        return self.offsets[i], self.offsets[i + 1]

    def __getstate__(self):
        # the layout pickles the buffers; the tensors and views over them are made again
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("np_") and k not in ("data", "grad", "grad_views")}

    def __setstate__(self, state):
        # A deep-copied nn.Parameter is a clone, no longer a view of the copied buffer: pack
        # the copies back into it (values unchanged), then remake the views.
        self.__dict__.update(state)
        self._link()
        self._pack()

    def tensor_buffer(self, name):
        if name not in self.state:
            self.state[name] = torch.zeros(self.offsets[-1], dtype=self.dtype)
            self.np_state[name] = self.state[name].numpy()
        return self.state[name]

    def scalar_buffer(self, name):
        if name not in self.scalars:
            self.scalars[name] = torch.zeros(len(self.params), dtype=torch.float32)
            self.np_scalars[name] = self.scalars[name].numpy()
        return self.scalars[name]


_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_DTYPE, _SHAPE, _IS_CPU = (operator.attrgetter(n) for n in ("dtype", "shape", "is_cpu"))
is_ = operator.is_


class _TableCheck:
    """What fastgd.torch checks of a Table each step (_table_grads_of): its group and the
    group's parameters, the stepped parameters, their data addresses, the entries of their
    state dicts and where their memory was ([(name, positions or None: all, [entry],
    [data_ptr])], read from the dicts the state holds now: a replaced dict is a replaced
    entry; an entry given other memory, t.data = ..., moved), the parameters it left out (no
    gradient when it was made: they must still have none), the gradients' expected dtypes and
    shapes (their parameters'), and the step counts (a float32 NumPy view, or None: the rule
    keeps none)."""
    __slots__ = ("group", "all", "params", "ptrs", "containers", "others", "dtypes", "shapes",
                 "steps")    # group: held so that its id (the table's key) is not reused

    def __init__(self, group, all_params, params, ptrs, containers, others, dtypes, shapes, steps):
        self.group, self.all, self.params, self.ptrs = group, all_params, params, ptrs
        self.containers, self.others = containers, others
        self.dtypes, self.shapes, self.steps = dtypes, shapes, steps


class _Run:
    """Parameters [i0, i1) of a flat buffer stepped by one kernel call (same step count, all
    with or all without fresh state): Slot.aux of such a step."""
    __slots__ = ("fg", "i0", "i1")

    def __init__(self, fg, i0, i1):
        self.fg, self.i0, self.i1 = fg, i0, i1


def _plain(value, name):
    """An option as a Python number: a 1-element tensor is read (torch lets lr be a tensor;
    torch's own message for a larger one), anything else is passed to the check as it is."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v, f"{name}[{i}]") for i, v in enumerate(value))
    return value


#: keyword-only options of every fastgd.torch optimizer beyond torch's
_EXTRA = (("flatten", False), ("max_grad_norm", None), ("norm_type", 2.0), ("error_if_nonfinite", False),
          *FORMAT_OPTIONS.items())

# Where torch.optim accepts a value fastgd refuses, the message says why (issue: "says why").
_WHY = {
    "eps": "with eps = 0 a coordinate whose gradient history is all zero divides 0 by 0 (NaN)",
    "alpha": "alpha >= 1 never updates square_avg, which then stays at its initial 0 (division by eps)",
    "betas": "a beta of 1 never updates its moving average (and divides by 1 - beta^t = 0)",
    "dampening": "dampening outside [0, 1] reverses or amplifies the gradient in the momentum",
}


class _Optimizer(Core, torch.optim.Optimizer):
    """torch.optim.Optimizer on fastgd's core: a rule's spec, torch.optim's constructor
    signature (its peer's, from torch itself) and checks, and the kernel call per tensor, or
    per run of a flat buffer with ``flatten=True``."""

    peer = None            # the torch.optim class of the same rule, None if torch has none
    _torch_layout = True   # the state in torch's names and types (step a float32 tensor)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.spec is None:
            return
        P = inspect.Parameter
        if cls.peer is not None:
            sig = inspect.signature(getattr(torch.optim, cls.peer))
            params = [q.replace(default=cls.overrides.get(q.name, q.default)) if q.name in cls.overrides
                      else q for q in sig.parameters.values() if q.name not in cls.fixed]
        else:   # lion-pytorch's signature
            params = list(constructor_signature(cls.spec, cls.fixed, cls.overrides).parameters.values())
            params += [P(n, P.KEYWORD_ONLY, default=d) for n, d in (("foreach", None),
                                                                    ("differentiable", False))]
        params += [P(n, P.KEYWORD_ONLY, default=d) for n, d in _EXTRA]
        cls._signature = cls.__signature__ = inspect.Signature(params)

    overrides = {}

    def __init__(self, params, *args, **kwargs):
        bound = self._signature.bind(params, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        params = values.pop("params")
        extra = {n: values.pop(n) for n, _ in _EXTRA}
        name = type(self).__name__
        if not isinstance(extra["flatten"], bool):
            raise TypeError(f"{name}: flatten must be a bool; got {extra['flatten']!r}")
        if self.peer is not None:
            # What torch.optim refuses is refused with torch's own error (tensor lr of 2
            # elements, lr tensor with foreach=True, ...): its constructor is the check.
            getattr(torch.optim, self.peer)([torch.zeros(1, requires_grad=True)], **values)
        values.update(self.fixed)
        self._init_core({n: extra[n] for n in FORMAT_OPTIONS})
        self._init_clipping(extra["max_grad_norm"], extra["norm_type"], extra["error_if_nonfinite"])
        self.flatten = extra["flatten"]
        self._flats = []
        self._ptrs = {}      # param -> data_ptr() when its slot was made (p.data = ... is noticed)
        self._copies = {}    # non-contiguous param -> the contiguous tensor its kernel steps
        self._tables = {}    # id(group) -> its Table (_TableCheck in aux, which holds the
        #                      group: its id is not reused while the entry exists)
        self._check_group(values)        # the defaults, with fastgd's checks
        super().__init__(params, values)
        if self.spec.name == "adagrad":
            self._init_all_state()       # torch.optim.Adagrad creates its state in the constructor

    # --- options --------------------------------------------------------------------------------

    def _check_group(self, group):
        """The spec's checks (the same as fastgd.optim's) on the group's values read as Python
        numbers, after refusing what fastgd cannot do at all."""
        name = type(self).__name__
        if group.get("differentiable"):
            raise ValueError(f"{name}: differentiable=True is not supported by fastgd.torch "
                             "(the update runs outside autograd); use torch.optim")
        if group.get("capturable"):
            raise ValueError(f"{name}: capturable=True (CUDA graphs) is not supported by "
                             "fastgd.torch, which steps CPU tensors")
        plain = {k: _plain(group[k], k) for k, _ in self.spec.options}
        try:
            return Core._check_group(self, plain)
        except (TypeError, ValueError) as exc:
            if self.peer is None or isinstance(exc, TypeError):
                raise
            # what torch.optim refuses too is refused with torch's own message
            options = {k: v for k, v in group.items() if k != "params" and k not in self.fixed}
            getattr(torch.optim, self.peer)([torch.zeros(1, requires_grad=True)], **options)
            bad = next((k for k in _WHY if str(exc).startswith(k)), None)
            why = f": {_WHY[bad]}" if bad else ""
            raise type(exc)(f"{name}: {exc} (torch.optim.{self.peer} accepts it, fastgd does "
                            f"not{why})") from None

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            for i, p in enumerate(group["params"]):
                _check_tensor(p, f"parameter {i} of group {len(self.param_groups) - 1}", type(self).__name__)
        except Exception:
            self.param_groups.pop()
            raise
        if self.flatten:
            self._flatten_group(group)

    def _flatten_group(self, group):
        o = self._check_group(group)
        if any(p.dtype not in (torch.float32, torch.float64) for p in group["params"]) or \
                o["state_dtype"] is not None or o["optim_bits"] != 32:
            raise TypeError(f"{type(self).__name__}(flatten=True) packs float32/float64 parameters "
                            "with states of their dtype; step bfloat16/float16 parameters, "
                            "another state_dtype or quantized states (optim_bits) without flatten "
                            "(one kernel call steps a group's tensors in place either way)")
        by_dtype = {}
        for p in group["params"]:
            by_dtype.setdefault(p.dtype, []).append(p)
        flats = [_Flat(ps, dtype) for dtype, ps in by_dtype.items()]
        self._flats.append((group, flats))

    def _flat_of(self, group):
        for g, flats in self._flats:
            if g is group:
                return flats
        raise AssertionError("a flattened group without buffers")

    # --- Core's storage hooks: torch's state, {param: {"step": float32 tensor, name: tensor}} ----

    def _state_get(self, key):
        return self.state.get(key)

    def _state_put(self, key, state):
        self.state[key] = state

    def _new_state(self, slot, name, init, dtype):
        return torch.full_like(slot.param, init, dtype=_TORCH_DTYPE[dtype],
                               memory_format=torch.contiguous_format)

    @staticmethod
    def _new_raw(slot, name, size, dtype, like_param):
        # 8-bit codes in the parameter's shape, as bitsandbytes keeps its state1/state2
        if like_param:
            return torch.zeros_like(slot.param, dtype=_TORCH_DTYPE[dtype],
                                    memory_format=torch.contiguous_format)
        return torch.zeros(size, dtype=_TORCH_DTYPE[dtype])

    def _view(self, t, flat, where, dtype, size=None):
        name = type(self).__name__
        size = flat.size if size is None else size
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided \
                or t.numel() != size or not t.is_contiguous() \
                or t.dtype != _TORCH_DTYPE[dtype]:
            desc = (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                    else type(t).__name__)
            whose = "the parameter's " if size == flat.size else ""
            raise ValueError(f"{name}: {where} is {desc}; expected a contiguous CPU tensor of "
                             f"{_TORCH_DTYPE[dtype]} with {whose}{size} elements")
        return _np(t.detach()).reshape(-1)

    def _ordinal_of(self, key):
        for i, p in enumerate(q for g in self.param_groups for q in g["params"]):
            if p is key:
                return i
        return 0

    @staticmethod
    def _zero_step():
        return torch.tensor(0.0, dtype=torch.float32)

    @staticmethod
    def _new_scalar(value):
        return torch.tensor(value, dtype=torch.float32)

    def _advance(self, slot):
        aux = slot.aux
        if type(aux) is _Run:
            if not self.spec.torch_step:
                return 0
            steps = aux.fg.np_scalars["step"][aux.i0:aux.i1]
            steps += 1                      # float32, as torch's step tensors
            return int(steps[0])
        if not self.spec.torch_step:
            return 0
        step = slot.store["step"]
        if aux is None or aux[0] is not step:
            aux = slot.aux = (step, _scalar_array(step, "step", "a parameter", type(self).__name__))
        view = aux[1]
        t = view.item() + 1.0     # stored as float32, as torch's step += 1 rounds (0.06 us, not 1)
        view[()] = t
        return int(view.item())

    def _scalars_of(self, slot):
        # numpy.float32 values: NAdam's mu_product * mu_t is then rounded to float32 as torch's
        # float32 tensor is (rules/nadam.py)
        aux = slot.aux
        if type(aux) is _Run:
            return {n: aux.fg.np_scalars[n][aux.i0] for n, _, _ in self.spec.scalar_state}
        return {n: np.float32(_scalar_array(slot.store[n], n, "a parameter", type(self).__name__))
                for n, _, _ in self.spec.scalar_state}

    def _store_scalars(self, slot, values):
        aux = slot.aux
        for n, v in values.items():
            if type(aux) is _Run:
                aux.fg.np_scalars[n][aux.i0:aux.i1] = v
            else:
                slot.store[n].fill_(float(v))

    def _init_all_state(self):
        """Create every parameter's state now (torch.optim.Adagrad does so in its constructor)."""
        for group in self.param_groups:
            prep = self._prep(group)
            if self.flatten:
                for fg in self._flat_of(group):
                    self._flat_state(prep, fg, range(len(fg.params)))
            else:
                work = []
                for i, p in enumerate(group["params"]):
                    flat = _np(p.detach()).reshape(-1)
                    work.append((prep, self._slot(p, p, flat, prep, f"parameter {i}"), None))
                self._commit(work)

    def _flat_state(self, prep, fg, indices):
        """Make sure parameters ``indices`` of ``fg`` have their state as views of its buffers;
        returns the set of those whose tensor state was created now."""
        fresh = set()
        spec = self.spec
        names = frozenset(prep.names) | ({"step"} if spec.torch_step else set()) \
            | {n for n, _, _ in spec.scalar_state}
        if names <= fg.ready:
            return fresh
        inits = {st.name: st.initial(prep.o) for st in spec.state if st.name in prep.names}
        scalars = ([("step", 0.0)] if spec.torch_step else []) + [(n, v) for n, v, _ in spec.scalar_state]
        for name in prep.names:
            fg.tensor_buffer(name)
        for name, _ in scalars:
            fg.scalar_buffer(name)
        for i in indices:
            p = fg.params[i]
            state = self.state[p]
            lo, hi = fg.slot(i)
            for name, value in scalars:
                if name not in state:
                    fg.scalars[name][i] = value
                    state[name] = fg.scalars[name][i]
            for name in prep.names:
                if name not in state:
                    view = fg.state[name][lo:hi]
                    view.fill_(inits[name])
                    state[name] = view.view(p.shape)
                    fresh.add(i)
        if all(all(n in self.state[p] for n in names) for p in fg.params):
            fg.ready = names
        return fresh

    # --- checkpoints ---------------------------------------------------------------------------

    @exclusive
    def state_dict(self):
        return super().state_dict()

    @exclusive
    def load_state_dict(self, state_dict):
        """torch.optim's load_state_dict (hooks included), after the whole state_dict is checked
        by the core and its state converted to what this optimizer keeps (private contiguous
        tensors, step and scalar state as float32 scalar tensors, as torch): a refused one
        changes nothing, and hooks see torch's types."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be a dict with the keys 'state' and 'param_groups'")
        if not isinstance(state_dict["state"], dict):
            raise ValueError("state_dict['state'] must be a dict {parameter index: state dict}")
        checked = self._checked_groups(state_dict["param_groups"], self.param_groups, self.defaults)
        params = [p for g in self.param_groups for p in g["params"]]
        order = [i for saved, _ in checked for i in saved["params"]]
        index_of = dict(zip(order, range(len(params))))
        options_of = [o for saved, o in checked for _ in saved["params"]]
        state = {}
        for key, saved in state_dict["state"].items():
            if key not in index_of:
                raise ValueError(f"state_dict has state for parameter {key!r}, which no group lists")
            p = params[index_of[key]]
            loaded = self._checked_param_state(
                saved, options_of[index_of[key]], tuple(p.shape),
                _NP_DTYPE[p.dtype], f"state of parameter {key}",
                lambda v: _np(v.detach().cpu()) if isinstance(v, torch.Tensor) else np.asarray(v))
            out = {}
            for name, v in loaded.items():
                if isinstance(v, np.ndarray):
                    want = self.expected_dtype(options_of[index_of[key]], _NP_DTYPE[p.dtype], name,
                                               p.numel())
                    t = _tensor(v).to(_TORCH_DTYPE[want])
                    # a quantized state's codes and block maxima keep their own shape
                    out[name] = (t.reshape(p.shape) if v.size == p.numel() and
                                 not name.endswith("_absmax") else t).contiguous()
                else:
                    out[name] = torch.tensor(float(v), dtype=torch.float32)
            state[key] = out
        super().load_state_dict({**state_dict, "state": state})
        # torch cast every float state to its parameter's dtype: states kept in another format
        # (state_dtype, the float32 master copy) are put back as they were checked, unrounded
        for key, out in state.items():
            mine = self.state.get(params[index_of[key]])
            for name, v in out.items():
                if mine is not None and isinstance(mine.get(name), torch.Tensor) and \
                        mine[name].dtype != v.dtype and v.dim() > 0:
                    mine[name] = v
        # torch replaced the group dicts: the flat buffers follow them (same order and params)
        self._flats = [(group, flats) for group, (_, flats) in zip(self.param_groups, self._flats)]
        self._slots.clear()
        self._preps.clear()
        self._tables.clear()
        if self.flatten:
            self._relink_flat()

    def _relink_flat(self):
        """Move the loaded state into the flat buffers (each state tensor a view of them)."""
        scalar_names = (["step"] if self.spec.torch_step else []) + [n for n, _, _ in self.spec.scalar_state]
        for group, flats in self._flats:
            for fg in flats:
                fg.ready = frozenset()
                for i, p in enumerate(fg.params):
                    state = self.state.get(p)
                    if not state:
                        continue
                    lo, hi = fg.slot(i)
                    for key, value in list(state.items()):
                        if not isinstance(value, torch.Tensor):
                            continue          # a hook's own entry: not ours to move
                        if key in scalar_names:
                            fg.scalar_buffer(key)[i] = value
                            state[key] = fg.scalars[key][i]
                        elif value.numel() == hi - lo:
                            view = fg.tensor_buffer(key)[lo:hi]
                            view.copy_(value.reshape(-1))
                            state[key] = view.view(p.shape)

    def __getstate__(self):
        # torch.optim pickles only defaults/state/param_groups; fastgd's settings and flat
        # buffers go too (deepcopy and pickle must give an optimizer that steps), its caches
        # (views and ids of this process) and lock do not
        state = dict(self.__dict__)
        state.pop("_busy", None)
        state["_slots"], state["_preps"], state["_ptrs"], state["_copies"] = {}, {}, {}, {}
        state["_tables"] = {}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints of older torch versions lack newer options
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # --- the step -----------------------------------------------------------------------------

    def zero_grad(self, set_to_none=True):
        if not self.flatten:
            return super().zero_grad(set_to_none)
        # The gradients live in the flat buffers: zero them in place (one pass) and keep them.
        for _, flats in self._flats:
            for fg in flats:
                fg.grad.zero_()
                for p, view in zip(fg.params, fg.grad_views):
                    g = p.grad
                    if g is not None and g is not view:
                        p.grad = view

    @lean_step       # torch.no_grad() and torch.optim's step wrapper, at a fraction of their cost
    def step(self, closure=None):
        """One optimization step over every parameter with a gradient; returns closure's loss.
        Everything is checked before anything is written; with max_grad_norm, a non-finite norm
        skips the step (counted in skipped_steps) or raises with error_if_nonfinite."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lock = self.__dict__.get("_busy") or lock_of(self)   # _core.exclusive, written out
        if not lock.acquire(False):
            raise busy(self, "step")
        try:
            preps = [self._prep(group) for group in self.param_groups]
            if self.flatten:
                work, copies, fresh = self._gather_flat(preps), (), ()
            else:
                work, copies, fresh = self._gather(preps)
            if self._run(work, 1.0):
                for p, copy in copies:
                    p.copy_(copy)
                for group, prep, lo, hi in fresh:    # the next step checks a table instead
                    self._make_table(group, prep, [slot for _, slot, _ in work[lo:hi]])
        finally:
            lock.release()
        return loss

    def _gather(self, preps):
        """[(prep, slot, flat grad)] for every parameter with a gradient, all checked (a group
        whose Table still holds: one item (prep, table, its gradients)), the (non-contiguous
        param, its contiguous copy) pairs to write back after the step, and the groups to make
        a table of after it: [(group, prep, first item, end)]."""
        work, copies, fresh = [], [], []
        name = type(self).__name__
        slots, ptrs, state_get, valid = self._slots, self._ptrs, self.state.get, check.valid
        tables = self._tables if self._max_grad_norm is None else None
        for gi, (group, prep) in enumerate(zip(self.param_groups, preps)):
            if tables is not None:
                table = tables.get(id(group))
                checked = None if table is None else self._table_grads_of(group, prep, table)
                if checked is not None:
                    work.append((prep, table, checked))
                    continue
                tables.pop(id(group), None)       # no table, or one that no longer holds
                fresh.append((group, prep, len(work), None))
            names = prep.names
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                slot = slots.get(p)
                # The usual step, in as few operations as it takes (~2 us of Python a tensor):
                # the same parameter memory, state and options as last step, and a gradient
                # whose NumPy view passes the one-call check (kernels/arrays.pyx).
                if slot is not None and slot.tag[0] == p.data_ptr() and slot.names == names \
                        and slot.tag[2] is None:
                    state = state_get(p)
                    # the same state dict, its memory where it was (t.data = ... moves it)
                    if state is slot.store and tuple(map(_DATA_PTR, slot.containers)) == slot.addrs:
                        for n, c in zip(names, slot.containers):
                            if state.get(n) is not c:
                                break
                        else:
                            try:
                                gn = _np(g)
                            except (RuntimeError, TypeError):
                                gn = None
                            if gn is not None and gn.shape == slot.tag[1]:
                                gf = gn if gn.ndim == 1 else gn.reshape(-1)
                                if valid((gf, *slot.views), 0, True):
                                    work.append((prep, slot, gf))
                                    continue
                ptr = p.data_ptr()
                if slot is None or ptrs.get(p) != ptr:
                    where = f"parameter {i} of group {gi}"
                    _check_tensor(p, where, name)
                    if p.is_contiguous():
                        flat = _np(p.detach()).reshape(-1)
                    else:
                        # stepped through a contiguous copy (written back after the step), as
                        # torch steps any strided tensor; only this tensor pays the copies
                        self._copies[p] = torch.empty(p.shape, dtype=p.dtype)
                        flat = _np(self._copies[p]).reshape(-1)
                    ptrs[p] = ptr
                    slots.pop(p, None)
                else:
                    flat = slot.s["param"]
                    where = slot.where
                copy = self._copies.get(p) if self._copies else None
                if copy is not None:
                    copy.copy_(p.detach())
                    copies.append((p, copy))
                slot = self._slot(p, p, flat, prep, where)
                slot.tag = (ptr, tuple(p.shape), copy)   # what the short path above compares
                # The gradient is not cached: holding last step's would keep it alive after
                # zero_grad(set_to_none=True) frees it. The common case (a plain CPU gradient
                # like the parameter, not sharing memory with it or its state) is checked in one
                # call; anything else goes through the checks that name what is wrong.
                try:
                    gn = _np(g)          # refuses a gradient that requires grad, sparse, not CPU
                except (RuntimeError, TypeError):
                    gn = None
                if gn is not None and g.shape == p.shape:
                    gf = gn if gn.ndim == 1 else gn.reshape(-1)
                    if check.valid((gf, *slot.views), 0, True):
                        work.append((prep, slot, gf))
                        continue
                g = _grad_tensor(p, g, where, name)
                gf = _np(g).reshape(-1)
                self._checked_grad(slot, gf, where)
                work.append((prep, slot, gf))
            if fresh and fresh[-1][0] is group and fresh[-1][3] is None:
                fresh[-1] = (group, prep, fresh[-1][2], len(work))
        if tables and len(tables) > len(self.param_groups):    # a group dict replaced or removed
            current = set(map(id, self.param_groups))
            for key in [k for k in tables if k not in current]:
                del tables[key]
        return work, copies, fresh

    # --- tables (fastgd._core.Table): the usual step without Python per tensor ---------------

    def _table_grads_of(self, group, prep, table):
        """This step's (gradient addresses, gradients) of the group of ``table`` if the table
        still holds and every gradient is a plain one (a CPU strided tensor of its parameter's
        dtype and shape, C-contiguous, sharing no memory with any parameter or state array of
        the table; one requiring grad is read as its detached self is); None if the table no
        longer holds or a gradient is anything else: the slow path then checks everything,
        says what is wrong, and a new table is made. A few passes over the group's tensors,
        each in C (map), ~1 us a tensor in all."""
        ch = table.aux
        params = group["params"]
        if (len(params) != len(ch.all) or not all(map(is_, params, ch.all))
                or not self._table_fits(table, prep)):
            return None
        ps = ch.params
        if list(map(_DATA_PTR, ps)) != ch.ptrs:         # p.data = ... (or .to(), ...)
            return None
        stores = list(map(self.state.get, ps))
        try:         # each state entry the table's addresses (and step counts) were taken from
            for name, idx, expected, addrs in ch.containers:
                sub = stores if idx is None else [stores[i] for i in idx]
                if (not all(map(is_, map(operator.itemgetter(name), sub), expected))
                        or list(map(_DATA_PTR, expected)) != addrs):    # t.data = ...
                    return None
        except (KeyError, TypeError):     # an entry, or a parameter's whole state, deleted
            return None
        if ch.others and any(g is not None for g in map(_GRAD, ch.others)):
            return None
        grads = list(map(_GRAD, ps))
        try:
            addresses = list(map(_DATA_PTR, grads))     # None, or a tensor without storage
        except (TypeError, RuntimeError):
            return None
        # a layout without strides (sparse, mkldnn) has no data_ptr: refused above
        if (list(map(_DTYPE, grads)) != ch.dtypes or list(map(_SHAPE, grads)) != ch.shapes
                or not all(map(_IS_CPU, grads)) or not all(map(torch.Tensor.is_contiguous, grads))
                or any(map(torch.Tensor.is_neg, grads))):
            return None
        addresses = self._table_grads(table, addresses)
        return None if addresses is None else (addresses, grads)

    def _make_table(self, group, prep, slots):
        """Keep the Table of a group the slow path just stepped (``slots``), with what
        _table_grads_of checks: its parameters' step counts become views of one float32 tensor
        (state["step"] of each, as with flatten=True), so they advance in one operation."""
        if self.flatten or any(s.tag[2] is not None for s in slots):   # stepped through copies
            return
        table = self._table(prep, slots)
        if table is None:
            return
        ps = [s.param for s in slots]
        steps = None
        if self.spec.torch_step:
            old = [s.store.get("step") for s in slots]
            if not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == 1
                       and t.is_cpu and t.layout == torch.strided for t in old):
                return
            buffer = torch.stack([t.detach().reshape(()) for t in old])
            for i, s in enumerate(slots):
                s.store["step"] = buffer[i]
            steps = buffer.numpy()
        containers = []
        for seg in table.segments:
            idx = None if seg.whole else list(seg.index)
            sub = [slots[i].store for i in seg.index]
            for n in self._container_names(slots[seg.index[0]]) + (("step",) if steps is not None else ()):
                entries = [st[n] for st in sub]
                containers.append((n, idx, entries, list(map(_DATA_PTR, entries))))
        stepped = {id(p) for p in ps}
        params = list(group["params"])
        table.aux = _TableCheck(group, params, ps, [p.data_ptr() for p in ps], containers,
                                [p for p in params if id(p) not in stepped],
                                [p.dtype for p in ps], [p.shape for p in ps], steps)
        self._tables[id(group)] = table

    @staticmethod
    def _addresses(containers):
        return tuple(map(_DATA_PTR, containers))

    def _table_advance(self, table):
        steps = table.aux.steps
        if steps is not None:
            steps += 1                      # float32, as torch's step tensors
        return steps

    @staticmethod
    def _flat_grad(g):
        return _np(g).reshape(-1)

    def _gather_flat(self, preps):
        """[(prep, slot of a run, flat grad)]: one item per run of parameters of a flat buffer
        that one kernel call can step (all with a gradient, equal step counts, all or none with
        fresh state)."""
        name = type(self).__name__
        pending = []
        for gi, ((group, flats), prep) in enumerate(zip(self._flats, preps)):
            for fg in flats:
                params = fg.params
                if [p.data_ptr() for p in params] != fg.ptrs:
                    raise RuntimeError(f"{name}(flatten=True): a parameter's data was replaced since "
                                       "the optimizer packed it (.to(), .data = ...); create the "
                                       "optimizer again")
                grads = [p.grad for p in params]
                if all(map(operator.is_, grads, fg.grad_views)):
                    pending.append((prep, fg, None))
                    continue
                active = []
                for i, (p, g, view) in enumerate(zip(params, grads, fg.grad_views)):
                    if g is None:
                        active.append(False)
                        continue
                    if g is not view:
                        _grad_tensor(p, g, f"parameter {i} of group {gi}", name)
                    active.append(True)
                pending.append((prep, fg, active))
        # checked: now gradients autograd allocated (after grad = None) move into the buffers
        work = []
        for prep, fg, active in pending:
            if active is not None:
                for p, view, on in zip(fg.params, fg.grad_views, active):
                    if on and p.grad is not view:
                        view.copy_(p.grad)
                        p.grad = view
            indices = range(len(fg.params)) if active is None else [i for i, a in enumerate(active) if a]
            fresh = self._flat_state(prep, fg, indices)
            sc = fg.np_scalars
            scalar_names = list(sc)
            uniform = (active is None and not fresh
                       and all(sc[n][0] == sc[n][-1] and (sc[n] == sc[n][0]).all() for n in scalar_names))
            runs = [(0, len(fg.params))] if uniform else \
                _param_runs(fg, active, fresh, [sc[n] for n in scalar_names])
            for i0, i1 in runs:
                lo, hi = fg.offsets[i0], fg.offsets[i1]
                slot = Slot(None, fg.np_data[lo:hi])
                for n in prep.names:
                    slot.s[n] = fg.np_state[n][lo:hi]
                slot.aux = _Run(fg, i0, i1)
                slot.fresh = i0 in fresh
                work.append((prep, slot, fg.np_grad[lo:hi]))
        return work


_TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                np.dtype(np.float16): torch.float16, formats.bfloat16: torch.bfloat16}
_NP_DTYPE = {t: n for n, t in _TORCH_DTYPE.items()}
_TORCH_DTYPE[np.dtype(np.uint8)] = torch.uint8      # a quantized state's codes


def _tensor(a):
    """A tensor copy of NumPy array ``a`` (bfloat16 through its bits: torch cannot read
    ml_dtypes arrays)."""
    if a.dtype == formats.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, order="C"))


def _param_runs(fg, active, fresh, scalars):
    """Ranges [i0, i1) of consecutive parameters one kernel call can step together: all active,
    all fresh or none, equal scalar state (step count, ...)."""
    runs, start, key = [], None, None
    n = len(fg.params)
    for i in range(n + 1):
        on = i < n and (active is None or active[i])
        k = (i in fresh, tuple(float(a[i]) for a in scalars)) if on else None
        if start is not None and k != key:
            runs.append((start, i))
            start = None
        if on and start is None:
            start, key = i, k
    return runs


# --- the optimizers: a spec, a torch peer, and a docstring ---------------------------------------

class Adam(_Optimizer):
    spec, peer = SPECS["adam"], "Adam"
    __doc__ = spec.docstring("torch.optim.Adam on fastgd's fused kernel (``foreach``/``fused`` are "
                             "accepted and ignored: the kernel is fused); AdamW with "
                             "decoupled_weight_decay=True.")


class AdamW(_Optimizer):
    spec, peer = SPECS["adam"], "AdamW"
    fixed = {"decoupled_weight_decay": True}
    __doc__ = spec.docstring("torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2).")


class SGD(_Optimizer):
    spec, peer = SPECS["sgd"], "SGD"
    __doc__ = spec.docstring("torch.optim.SGD with momentum, dampening, nesterov.")


class Adagrad(_Optimizer):
    spec, peer = SPECS["adagrad"], "Adagrad"
    __doc__ = spec.docstring("torch.optim.Adagrad; the state is created in the constructor, as "
                             "torch does.")


class RMSprop(_Optimizer):
    spec, peer = SPECS["rmsprop"], "RMSprop"
    __doc__ = spec.docstring("torch.optim.RMSprop (centered, momentum).")


class Adamax(_Optimizer):
    spec, peer = SPECS["adamax"], "Adamax"
    __doc__ = spec.docstring("torch.optim.Adamax.")


class NAdam(_Optimizer):
    spec, peer = SPECS["nadam"], "NAdam"
    __doc__ = spec.docstring("torch.optim.NAdam (Dozat 2016) with momentum decay; ``mu_product`` is "
                             "a float32 scalar tensor rounded every step, as torch keeps it.")


class RAdam(_Optimizer):
    spec, peer = SPECS["radam"], "RAdam"
    __doc__ = spec.docstring("torch.optim.RAdam (Liu et al. 2020).")


class Lion(_Optimizer):
    spec = SPECS["lion"]
    __doc__ = spec.docstring("Lion (Chen et al. 2023), as lion-pytorch (torch.optim has none); "
                             "state ``exp_avg`` only (no step count).")


# the 8-bit and 4-bit classes under bitsandbytes' and torchao's names (built on the classes above)
from .lowbit import (Adagrad8bit, Adam4bit, Adam8bit, AdamW4bit, AdamW8bit, Lion8bit,  # noqa: E402
                     RMSprop8bit, SGD8bit)
