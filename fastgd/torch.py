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

The update is zero-copy: parameters, gradients and state are viewed as NumPy arrays
(``Tensor.numpy()`` shares memory) and updated in place by one fused pass per tensor: the
backend's raw kernel, called directly. Each group's options are checked once per step (as
fastgd.functional checks them; Adam/AdamW as torch.optim.Adam does) and every tensor cheaply,
before anything is written; the step-dependent scalars come from fastgd.functional's helpers.

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
  A non-finite norm raises before anything changes (torch would write NaNs into the parameters).

What it refuses, with a message: tensors not on the CPU (CUDA, MPS, ...), complex or
half/bfloat16 parameters, sparse gradients, ``differentiable=True`` and ``capturable=True``,
a gradient or state tensor sharing memory with its parameter or each other.
Parameters whose ``grad`` is None are skipped.
"""
import math
import operator

import numpy as np
import torch

from . import _validate as check
from . import functional as F
from .backends import kernel

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Lion",
           "clip_grad_norm_"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


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
        raise TypeError(f"{optimizer}: {what} has dtype {t.dtype}; fastgd.torch supports float32 "
                        "and float64 (not half/bfloat16 yet)")


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


def _span(t):
    """The bytes [lo, hi) a contiguous tensor occupies ((0, 0) if empty: it overlaps nothing)."""
    n = t.numel()
    if not n:
        return 0, 0
    lo = t.data_ptr()
    return lo, lo + n * t.element_size()


def _refuse_overlap(span, spans, what, optimizer):
    """Refuse (as fastgd.functional's no_overlap does) an array sharing memory with one of
    ``spans`` ({name: (lo, hi)}): the kernels read and write them element by element."""
    lo, hi = span
    for name, (a, b) in spans.items():
        if lo < b and a < hi:
            raise ValueError(f"{optimizer}: {what} shares memory with {name}; each must be its "
                             "own tensor")


def _state_array(t, p, name, what, optimizer):
    """A state tensor of ``p`` as a flat writable NumPy view (it must be like the parameter)."""
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype != p.dtype \
            or t.numel() != p.numel() or not t.is_contiguous() or t.layout != torch.strided:
        desc = (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                else type(t).__name__)
        raise ValueError(f"{optimizer}: state {name!r} of {what} is {desc}; expected a contiguous "
                         f"CPU tensor like the parameter ({p.dtype} {tuple(p.shape)})")
    return t.detach().numpy().reshape(-1)


def _scalar_array(t, name, what, optimizer):
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.device.type != "cpu" \
            or t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{optimizer}: state {name!r} of {what} must be a float scalar CPU tensor; "
                         f"got {t!r}")
    return t.detach().numpy().reshape(())


def _norm_type(norm_type):
    value = float(norm_type)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"norm_type must be > 0 (or inf); got {norm_type!r}")
    return value


def _global_norm(arrays, norm_type):
    """The norm of all ``arrays`` taken together (deterministic, float64)."""
    fn = getattr(F, "global_norm", None)
    if fn is not None:
        return float(fn(arrays, norm_type))
    # Until fastgd.functional.global_norm exists: the same quantity with NumPy, blocks of
    # _NORM_BLOCK elements in a fixed order, each block's sum added in float64.
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        return max(float(np.max(np.abs(a))) if a.size else 0.0 for a in arrays)
    total = 0.0
    for a in arrays:
        for lo in range(0, a.size, _NORM_BLOCK):
            b = a[lo:lo + _NORM_BLOCK]
            if norm_type == 2.0:
                total += float(np.dot(b, b))
            else:
                total += float(np.sum(np.abs(b.astype(np.float64)) ** norm_type))
    return total ** (1.0 / norm_type)


_NORM_BLOCK = 1 << 14


def _clip_coef(norm, max_norm):
    return min(1.0, max_norm / (norm + 1e-6))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """``torch.nn.utils.clip_grad_norm_`` on fastgd kernels, with a deterministic norm.

    total = norm of all gradients together; every gradient is scaled in place by
    min(1, max_norm / (total + 1e-6)). Returns ``total`` as a scalar tensor. Gradients must be
    CPU float32/float64 tensors (``grad is None`` is skipped). ``foreach`` is accepted and ignored.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    max_norm = float(max_norm)
    norm_type = _norm_type(norm_type)
    if not grads:
        return torch.tensor(0.0)
    arrays = []
    for i, g in enumerate(grads):
        _check_param(g, f"gradient {i}", "clip_grad_norm_")
        arrays.append(g.detach().numpy())
    dtype = grads[0].dtype
    fn = getattr(F, "clip_grad_norm_", None)
    if fn is not None:
        total = float(fn(arrays, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite))
    else:
        total = _global_norm([a.reshape(-1) for a in arrays], norm_type)
        if error_if_nonfinite and not math.isfinite(total):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` "
                               "is non-finite, so it cannot be clipped. To disable this error and "
                               "scale the gradients by the non-finite norm anyway, set "
                               "`error_if_nonfinite=False`")
        coef = _clip_coef(total, max_norm)
        for a in arrays:
            a *= a.dtype.type(coef)
    return torch.tensor(total, dtype=dtype)


# --- flat buffers --------------------------------------------------------------------------------

class _Flat:
    """Parameters of one group and dtype packed into one buffer; their grads and state too."""

    def __init__(self, params, dtype):
        self.params = params
        self.dtype = dtype
        self.sizes = [p.numel() for p in params]
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        total = self.offsets[-1]
        self.data = torch.empty(total, dtype=dtype)
        self.grad = torch.zeros(total, dtype=dtype)
        self.grad_views = []
        with torch.no_grad():
            for p, lo, hi in zip(params, self.offsets, self.offsets[1:]):
                self.data[lo:hi].copy_(p.detach().reshape(-1))
                p.data = self.data[lo:hi].view(p.shape)
                view = self.grad[lo:hi].view(p.shape)
                self.grad_views.append(view)
                if p.grad is not None:
                    view.copy_(p.grad)
                    p.grad = view
        self.ptrs = [p.data_ptr() for p in params]
        self.np_data = self.data.numpy()
        self.np_grad = self.grad.numpy()
        self.state = {}       # name -> flat tensor like data
        self.np_state = {}
        self.scalars = {}     # name -> float32 tensor, one element per parameter
        self.np_scalars = {}
        self.ready = frozenset()  # state names every parameter has (as views of the flat buffers)

    def slot(self, i):
        return self.offsets[i], self.offsets[i + 1]

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


class _Slot:
    """Cached NumPy views of one parameter and its state tensors (non-flat mode), and the memory
    they occupy (``spans``: {"the parameter" | state name: (lo, hi)}, checked disjoint)."""
    __slots__ = ("ptr", "p", "tensors", "arrays", "spans")

    def __init__(self, ptr, p, span):
        self.ptr = ptr
        self.p = p
        self.tensors = {}
        self.arrays = {}
        self.spans = {"the parameter": span}


# --- the base ------------------------------------------------------------------------------------

class _Optimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer whose step runs a fastgd kernel per tensor (or per flat buffer).

    A subclass declares its state (``_tensor_state``: arrays like the parameter with their initial
    value; ``_scalar_state``: float32 scalar tensors such as ``step``), ``_prepare``, which checks a
    group's options and returns the raw kernel and its constants, and ``_rule``, which calls that
    kernel on flat NumPy views.
    """

    #: scalar (0-d float32 tensor) state and initial values, in torch's order
    _scalar_state = (("step", 0.0),)

    def __init__(self, params, defaults, *, flatten=False, max_grad_norm=None, norm_type=2.0):
        name = type(self).__name__
        if not isinstance(flatten, bool):
            raise TypeError(f"{name}: flatten must be a bool; got {flatten!r}")
        if max_grad_norm is not None:
            max_grad_norm = float(max_grad_norm)
            if not (0.0 < max_grad_norm < math.inf):
                raise ValueError(f"{name}: max_grad_norm must be a finite number > 0; got {max_grad_norm}")
        self.flatten = flatten
        self.max_grad_norm = max_grad_norm
        self.norm_type = _norm_type(norm_type)
        self.last_grad_norm = None
        self._flats = []
        self._slots = {}
        super().__init__(params, defaults)

    # --- groups and state ---------------------------------------------------------------------

    def _check_options(self, group):
        """Refuse what fastgd cannot do; subclasses add their hyperparameter checks."""
        name = type(self).__name__
        if group.get("differentiable"):
            raise ValueError(f"{name}: differentiable=True is not supported by fastgd.torch "
                             "(the update runs outside autograd); use torch.optim")
        if group.get("capturable"):
            raise ValueError(f"{name}: capturable=True (CUDA graphs) is not supported by "
                             "fastgd.torch, which steps CPU tensors")

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_options(group)
            for i, p in enumerate(group["params"]):
                _check_param(p, f"parameter {i} of group {len(self.param_groups) - 1}", type(self).__name__)
        except Exception:
            self.param_groups.pop()
            raise
        if self.flatten:
            self._flatten_group(group)

    def _flatten_group(self, group):
        by_dtype = {}
        for p in group["params"]:
            by_dtype.setdefault(p.dtype, []).append(p)
        flats = [_Flat(ps, dtype) for dtype, ps in by_dtype.items()]
        self._flats.append((group, flats))

    def _tensor_state(self, group):
        """[(name, initial value)] of the state arrays a parameter needs under these options."""
        raise NotImplementedError

    def _new_state(self, group, p, state):
        """Create missing state of ``p`` (non-flat mode); True if any array was created."""
        created = False
        for name, value in self._scalar_state:
            if name not in state:
                state[name] = torch.tensor(value, dtype=torch.float32)
        for name, value in self._tensor_state(group):
            if name not in state:
                state[name] = torch.full_like(p, value, memory_format=torch.contiguous_format)
                created = True
        return created

    def _init_all_state(self):
        """Create every parameter's state now (torch.optim.Adagrad does so in its constructor)."""
        for group in self.param_groups:
            if self.flatten:
                for fg in self._flat_of(group):
                    self._flat_state(group, fg, range(len(fg.params)))
            else:
                for p in group["params"]:
                    self._new_state(group, p, self.state[p])

    def _flat_of(self, group):
        for g, flats in self._flats:
            if g is group:
                return flats
        raise AssertionError("a flattened group without buffers")

    def _flat_state(self, group, fg, indices):
        """Make sure parameters ``indices`` of ``fg`` have their state as views of its buffers;
        returns the set of those whose tensor state was created now."""
        fresh = set()
        tensor_state = self._tensor_state(group)
        names = frozenset(n for n, _ in tensor_state) | frozenset(n for n, _ in self._scalar_state)
        if names <= fg.ready:
            return fresh
        for name, _ in tensor_state:
            fg.tensor_buffer(name)
        for name, _ in self._scalar_state:
            fg.scalar_buffer(name)
        for i in indices:
            p = fg.params[i]
            state = self.state[p]
            lo, hi = fg.slot(i)
            for name, value in self._scalar_state:
                if name not in state:
                    fg.scalars[name][i] = value
                    state[name] = fg.scalars[name][i]
            for name, value in tensor_state:
                if name not in state:
                    view = fg.state[name][lo:hi]
                    view.fill_(value)
                    state[name] = view.view(p.shape)
                    fresh.add(i)
        if all(all(n in self.state[p] for n in names) for p in fg.params):
            fg.ready = names
        return fresh

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints of older torch versions lack newer options
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        name = type(self).__name__
        # torch replaced the group dicts: the flat buffers follow them (same order and params).
        self._flats = [(group, flats) for group, (_, flats) in zip(self.param_groups, self._flats)]
        for group in self.param_groups:
            self._check_options(group)
        scalars = dict(self._scalar_state)
        # Private, contiguous copies (torch.optim would alias the loaded tensors), and the
        # scalars as float32 scalar tensors as torch keeps them.
        for p, state in self.state.items():
            for key, value in list(state.items()):
                if key in scalars:
                    state[key] = torch.tensor(float(value), dtype=torch.float32)
                elif isinstance(value, torch.Tensor):
                    state[key] = value.detach().to(dtype=p.dtype).clone(memory_format=torch.contiguous_format)
        self._slots.clear()
        if self.flatten:
            for group, flats in self._flats:
                for fg in flats:
                    fg.ready = frozenset()
                    for i, p in enumerate(fg.params):
                        state = self.state.get(p)
                        if not state:
                            continue
                        lo, hi = fg.slot(i)
                        for key, value in list(state.items()):
                            if key in scalars:
                                fg.scalar_buffer(key)[i] = value
                                state[key] = fg.scalars[key][i]
                            elif isinstance(value, torch.Tensor):
                                if value.numel() != hi - lo:
                                    raise ValueError(f"{name}: state {key!r} has {value.numel()} "
                                                     f"elements but its parameter has {hi - lo}")
                                view = fg.tensor_buffer(key)[lo:hi]
                                view.copy_(value.reshape(-1))
                                state[key] = view.view(p.shape)

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

    @torch.no_grad()
    def step(self, closure=None):
        """One optimization step over every parameter with a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Every group's options are checked (and its kernel constants computed) before any write.
        preps = {}
        for group in self.param_groups:
            self._check_options(group)
            preps[id(group)] = self._prepare(group)
        work = self._gather_flat() if self.flatten else self._gather()
        grad_scale = 1.0
        arrays = [g for item in work for g in item[-1]] if self.max_grad_norm is not None else []
        if arrays:
            norm = _global_norm(arrays, self.norm_type)
            if not math.isfinite(norm):
                raise RuntimeError(f"{type(self).__name__}: the total gradient norm (order "
                                   f"{self.norm_type}) is {norm}; not stepping (nothing changed)")
            self.last_grad_norm = norm
            grad_scale = _clip_coef(norm, self.max_grad_norm)
        if self.flatten:
            self._step_flat(work, grad_scale, preps)
        else:
            self._step_each(work, grad_scale, preps)
        return loss

    def _gather(self):
        """[(group, p, slot, grad span, [grad array])] for every parameter with a gradient, all
        checked (as the kernels need them, and not sharing memory with the parameter or its state)."""
        work = []
        name = type(self).__name__
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                slot = self._slots.get(p)
                ptr = p.data_ptr()
                if slot is None or slot.ptr != ptr:
                    _check_param(p, f"parameter {i} of group {gi}", name)
                    slot = self._slots[p] = _Slot(ptr, p.detach().numpy().reshape(-1), _span(p))
                # Not cached: holding last step's gradients would keep them alive after
                # zero_grad(set_to_none=True) frees them. The common case (a plain gradient like
                # the parameter, which was checked) is tested in one expression; anything else
                # goes through the checks that name what is wrong.
                if not (g.dtype == p.dtype and g.shape == p.shape and g.is_cpu
                        and g.layout == torch.strided and not g.requires_grad and g.is_contiguous()):
                    g = _grad_tensor(p, g, f"parameter {i} of group {gi}", name)
                n = g.numel()
                lo = g.data_ptr() if n else 0
                hi = lo + n * g.element_size()
                for other, (a, b) in slot.spans.items():
                    if lo < b and a < hi:
                        _refuse_overlap((lo, hi), slot.spans, f"the gradient of parameter {i} of "
                                        f"group {gi}", name)
                work.append((group, p, slot, (lo, hi), (g.numpy().reshape(-1),)))
        return work

    def _step_each(self, work, grad_scale, preps):
        name = type(self).__name__
        scalar_keys = tuple(k for k, _ in self._scalar_state)
        current = None
        for group, p, slot, gspan, (g,) in work:
            if group is not current:  # per group, once: the state it needs, the rule's constants
                current = group
                tensor_keys = tuple(k for k, _ in self._tensor_state(group))
                keys = scalar_keys + tensor_keys
                needed = set(keys)
                prep = preps[id(group)]
            state = self.state[p]
            fresh = self._new_state(group, p, state) if not state.keys() >= needed else False
            tensors, cached = slot.tensors, slot.arrays
            for key in keys:
                t = state[key]
                if tensors.get(key) is not t:
                    if key in scalar_keys:
                        cached[key] = _scalar_array(t, key, "a parameter", name)
                    else:  # a new state tensor (created, loaded or assigned): check it once
                        cached[key] = _state_array(t, p, key, "a parameter", name)
                        spans = {k: v for k, v in slot.spans.items() if k != f"state {key!r}"}
                        spans["its gradient"] = gspan
                        span = _span(t)
                        _refuse_overlap(span, spans, f"state {key!r} of a parameter", name)
                        slot.spans[f"state {key!r}"] = span
                    tensors[key] = t
            arrays = {key: cached[key] for key in keys}
            if "step" in arrays:
                arrays["step"] += 1
            self._rule(group, slot.p, g, arrays, grad_scale, fresh, prep)

    def _gather_flat(self):
        """[(group, fg, active, [grad arrays])]: ``active`` None when every parameter of the flat
        buffer has its gradient there, else a list of bools (grad is None: False)."""
        work = []
        name = type(self).__name__
        for gi, (group, flats) in enumerate(self._flats):
            for fg in flats:
                params = fg.params
                if [p.data_ptr() for p in params] != fg.ptrs:
                    raise RuntimeError(f"{name}(flatten=True): a parameter's data was replaced since "
                                       "the optimizer packed it (.to(), .data = ...); create the "
                                       "optimizer again")
                grads = [p.grad for p in params]
                if all(map(operator.is_, grads, fg.grad_views)):
                    work.append((group, fg, None, (fg.np_grad,)))
                    continue
                active = []
                for i, (p, g, view) in enumerate(zip(params, grads, fg.grad_views)):
                    if g is None:
                        active.append(False)
                        continue
                    if g is not view:
                        # A gradient autograd allocated (after grad = None): move it into the buffer.
                        _grad_tensor(p, g, f"parameter {i} of group {gi}", name)
                        view.copy_(g)
                        p.grad = view
                    active.append(True)
                arrays = [fg.np_grad[lo:hi] for lo, hi in _runs_of(fg, active)]
                work.append((group, fg, active, arrays))
        return work

    def _step_flat(self, work, grad_scale, preps):
        scalar_names = [n for n, _ in self._scalar_state]
        for group, fg, active, _ in work:
            indices = range(len(fg.params)) if active is None else [i for i, a in enumerate(active) if a]
            fresh = self._flat_state(group, fg, indices)
            names = [n for n, _ in self._tensor_state(group)]
            sc = fg.np_scalars
            uniform = (active is None and not fresh
                       and all(sc[n][0] == sc[n][-1] and (sc[n] == sc[n][0]).all() for n in scalar_names))
            if uniform:
                runs = [(0, len(fg.params))]
            else:
                runs = _param_runs(fg, active, fresh, [sc[n] for n in scalar_names])
            prep = preps[id(group)]
            for i0, i1 in runs:
                lo, hi = fg.offsets[i0], fg.offsets[i1]
                arrays = {n: fg.np_state[n][lo:hi] for n in names}
                for n in scalar_names:
                    arrays[n] = np.array(sc[n][i0])
                if "step" in arrays:
                    arrays["step"] += 1
                self._rule(group, fg.np_data[lo:hi], fg.np_grad[lo:hi], arrays, grad_scale, i0 in fresh,
                           prep)
                for n in scalar_names:
                    sc[n][i0:i1] = arrays[n]

    def _prepare(self, group):
        """Check the group's options, once per step and before any write, raising as
        fastgd.functional's form of the rule would (same checks, same messages), and return what
        ``_rule`` needs from them: the raw kernel and its per-group constants."""
        raise NotImplementedError

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        """Update flat arrays ``p`` and the state arrays ``s`` in place from gradient ``g`` with
        the raw kernel (the arrays are checked: CPU, dtype, contiguous, sizes, no overlap);
        ``s["step"]`` is already advanced; ``fresh``: the state arrays were created now;
        ``prep``: what ``_prepare(group)`` returned."""
        raise NotImplementedError


def _runs_of(fg, active):
    """Element ranges of consecutive active parameters of ``fg``."""
    out, start = [], None
    for i, a in enumerate(list(active) + [False]):
        if a and start is None:
            start = i
        elif not a and start is not None:
            out.append((fg.offsets[start], fg.offsets[i]))
            start = None
    return out


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


def _lr(group):
    return float(group["lr"])


def _betas(group):
    b1, b2 = group["betas"]
    return float(b1), float(b2)


def _checked(group, *names):
    """The group's options ``names``, checked as fastgd.functional checks them (by the same
    table, OPTION_CHECKS, in this order), as floats (betas as a pair of floats).

    All are converted to float first (torch lets an option be a number or a tensor), then checked.
    """
    values = {name: float(group[name]) for name in names if name != "betas"}
    if "betas" in names:
        values["betas"] = _betas(group)
    return [check.OPTION_CHECKS[name](name, values[name]) for name in names]


def _require(ok, message):
    if not ok:
        raise ValueError(message)


# --- the optimizers -------------------------------------------------------------------------------

class Adam(_Optimizer):
    """torch.optim.Adam on fastgd's fused kernel (AdamW with ``decoupled_weight_decay=True``).

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2  (vmax = max(vmax, v) with amsgrad)
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    weight decay: g += wd p, or p *= 1 - lr wd when decoupled. ``foreach``/``fused`` are accepted
    and ignored (the kernel is fused).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, flatten=False, max_grad_norm=None, norm_type=2.0):
        _adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        if group["amsgrad"]:
            return (("exp_avg", 0.0), ("exp_avg_sq", 0.0), ("max_exp_avg_sq", 0.0))
        return (("exp_avg", 0.0), ("exp_avg_sq", 0.0))

    def _prepare(self, group):
        # torch.optim.Adam's checks and messages, as in the constructor.
        _adam_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        b1, b2 = _betas(group)
        return (kernel("adam"), bool(group["maximize"]), _lr(group), b1, b2, float(group["eps"]),
                float(group["weight_decay"]), bool(group["decoupled_weight_decay"]),
                bool(group["amsgrad"]))

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, b1, b2, eps, wd, decoupled, amsgrad = prep
        t = int(s["step"])
        v = s["exp_avg_sq"]
        fn(p, g, p, s["exp_avg"], v, s.get("max_exp_avg_sq", v), grad_scale, maximize, False, lr,
           b1, b2, eps, wd, decoupled, amsgrad, 1.0 - b1 ** t, 1.0 - b2 ** t)


def _adam_args(lr, betas, eps, weight_decay):
    lr, eps, weight_decay = float(lr), float(eps), float(weight_decay)
    _require(0.0 <= lr < math.inf, f"Invalid learning rate: {lr}")
    _require(0.0 < eps < math.inf, f"Invalid epsilon value: {eps}")
    _require(0.0 <= weight_decay < math.inf, f"Invalid weight_decay value: {weight_decay}")
    b1, b2 = betas
    _require(0.0 <= float(b1) < 1.0, f"Invalid beta parameter at index 0: {b1}")
    _require(0.0 <= float(b2) < 1.0, f"Invalid beta parameter at index 1: {b2}")


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p *= 1 - lr wd), default wd 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, flatten=False, max_grad_norm=None, norm_type=2.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         flatten=flatten, max_grad_norm=max_grad_norm, norm_type=norm_type)


class SGD(_Optimizer):
    """torch.optim.SGD: p -= lr g, with momentum (buf = g at its first step, then
    buf = mu buf + (1 - dampening) g; nesterov: g + mu buf), weight decay g += wd p."""

    _scalar_state = ()

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, flatten=False,
                 max_grad_norm=None, norm_type=2.0):
        _require(float(lr) >= 0.0, f"Invalid learning rate: {lr}")
        _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
        _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        _require(not nesterov or (momentum > 0 and dampening == 0),
                 "Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        return (("momentum_buffer", 0.0),) if group["momentum"] != 0 else ()

    def _prepare(self, group):
        lr, momentum, dampening, wd = _checked(group, "lr", "momentum", "dampening", "weight_decay")
        nesterov = bool(group["nesterov"])
        check.nesterov_momentum(nesterov, momentum, dampening)
        return kernel("sgd"), bool(group["maximize"]), lr, momentum, dampening, wd, nesterov

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, momentum, dampening, wd, nesterov = prep
        # The buffer is set to g at its first step (``fresh``: created now), as torch's.
        fn(p, g, p, s["momentum_buffer"] if momentum > 0.0 else p, grad_scale, maximize, False, lr,
           momentum, dampening, wd, nesterov, bool(fresh))


class Adagrad(_Optimizer):
    """torch.optim.Adagrad: s += g^2; p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps).
    The state is created in the constructor (``sum`` = initial_accumulator_value), as torch does."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 flatten=False, max_grad_norm=None, norm_type=2.0):
        _require(float(lr) >= 0.0, f"Invalid learning rate: {lr}")
        _require(lr_decay >= 0.0, f"Invalid lr_decay value: {lr_decay}")
        _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        _require(initial_accumulator_value >= 0.0,
                 f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)
        self._init_all_state()

    def _tensor_state(self, group):
        return (("sum", float(group["initial_accumulator_value"])),)

    def _prepare(self, group):
        lr, lr_decay, wd, eps = _checked(group, "lr", "lr_decay", "weight_decay", "eps")
        return kernel("adagrad"), bool(group["maximize"]), lr, lr_decay, wd, eps

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, lr_decay, wd, eps = prep
        clr = F.adagrad_lr(check.step(int(s["step"])), lr, lr_decay)
        fn(p, g, p, s["sum"], grad_scale, maximize, False, clr, wd, eps)


class RMSprop(_Optimizer):
    """torch.optim.RMSprop: sq = a sq + (1 - a) g^2; d = sqrt(sq [- ga^2 if centered]) + eps;
    p -= lr g / d (or through a momentum buffer buf = mu buf + g / d)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, flatten=False, max_grad_norm=None, norm_type=2.0):
        _require(float(lr) >= 0.0, f"Invalid learning rate: {lr}")
        _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
        _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
        _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        _require(alpha >= 0.0, f"Invalid alpha value: {alpha}")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        out = [("square_avg", 0.0)]
        if group["momentum"] > 0:
            out.append(("momentum_buffer", 0.0))
        if group["centered"]:
            out.append(("grad_avg", 0.0))
        return tuple(out)

    def _prepare(self, group):
        lr, alpha, eps, wd, momentum = _checked(group, "lr", "alpha", "eps", "weight_decay", "momentum")
        return (kernel("rmsprop"), bool(group["maximize"]), lr, alpha, eps, wd, momentum,
                bool(group["centered"]))

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, alpha, eps, wd, momentum, centered = prep
        sq = s["square_avg"]
        fn(p, g, p, sq, s["momentum_buffer"] if momentum > 0.0 else sq,
           s["grad_avg"] if centered else sq, grad_scale, maximize, False, lr, alpha, eps, wd,
           momentum, centered)


class Adamax(_Optimizer):
    """torch.optim.Adamax: m = b1 m + (1 - b1) g; u = max(b2 u, |g| + eps);
    p -= lr / (1 - b1^t) * m / u."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None,
                 *, maximize=False, differentiable=False, capturable=False, flatten=False,
                 max_grad_norm=None, norm_type=2.0):
        _adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        return (("exp_avg", 0.0), ("exp_inf", 0.0))

    def _prepare(self, group):
        lr, (b1, b2), eps, wd = _checked(group, "lr", "betas", "eps", "weight_decay")
        return kernel("adamax"), bool(group["maximize"]), lr, b1, b2, eps, wd

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, b1, b2, eps, wd = prep
        t = check.step(int(s["step"]))
        fn(p, g, p, s["exp_avg"], s["exp_inf"], grad_scale, maximize, False, lr, b1, b2, eps, wd,
           1.0 - b1 ** t)


class NAdam(_Optimizer):
    """torch.optim.NAdam (Dozat 2016) with momentum decay; state ``mu_product`` as torch keeps it
    (a float32 scalar tensor)."""

    _scalar_state = (("step", 0.0), ("mu_product", 1.0))

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, flatten=False, max_grad_norm=None,
                 norm_type=2.0):
        _adam_args(lr, betas, eps, weight_decay)
        _require(momentum_decay >= 0.0, f"Invalid momentum_decay value: {momentum_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        return (("exp_avg", 0.0), ("exp_avg_sq", 0.0))

    def _prepare(self, group):
        # (step and mu_product are checked per tensor, in _rule)
        lr, (b1, b2), eps, wd, momentum_decay = _checked(group, "lr", "betas", "eps", "weight_decay",
                                                         "momentum_decay")
        return (kernel("nadam"), bool(group["maximize"]), lr, b1, b2, eps, wd, momentum_decay,
                bool(group["decoupled_weight_decay"]))

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, b1, b2, eps, wd, momentum_decay, decoupled = prep
        t = check.step(int(s["step"]))
        mu_product = check.fraction("mu_product", float(s["mu_product"]))
        grad_coef, avg_coef, mu_product = F.nadam_coefficients(t, mu_product, lr, b1, momentum_decay)
        fn(p, g, p, s["exp_avg"], s["exp_avg_sq"], grad_scale, maximize, False, lr, b1, b2, eps, wd,
           decoupled, grad_coef, avg_coef, 1.0 - b2 ** t)
        s["mu_product"][...] = mu_product


class RAdam(_Optimizer):
    """torch.optim.RAdam (Liu et al. 2020): Adam with the variance rectification term, plain
    momentum SGD while the variance is intractable (rho_t <= 5)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, flatten=False, max_grad_norm=None, norm_type=2.0):
        _adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        return (("exp_avg", 0.0), ("exp_avg_sq", 0.0))

    def _prepare(self, group):
        lr, (b1, b2), eps, wd = _checked(group, "lr", "betas", "eps", "weight_decay")
        return (kernel("radam"), bool(group["maximize"]), lr, b1, b2, eps, wd,
                bool(group["decoupled_weight_decay"]))

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, b1, b2, eps, wd, decoupled = prep
        t = check.step(int(s["step"]))
        adaptive, rect = F.radam_rectification(t, b2)
        fn(p, g, p, s["exp_avg"], s["exp_avg_sq"], grad_scale, maximize, False, lr, b1, b2, eps, wd,
           decoupled, 1.0 - b1 ** t, 1.0 - b2 ** t, adaptive, rect)


class Lion(_Optimizer):
    """Lion (Chen et al. 2023), as lion-pytorch (torch.optim has none):
    p *= 1 - lr wd;  p -= lr sign(b1 m + (1 - b1) g);  m = b2 m + (1 - b2) g.
    State: ``exp_avg`` only (no step count)."""

    _scalar_state = ()

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 foreach=None, differentiable=False, flatten=False, max_grad_norm=None, norm_type=2.0):
        _require(float(lr) >= 0.0, f"Invalid learning rate: {lr}")
        _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        b1, b2 = betas
        _require(0.0 <= b1 <= 1.0, f"Invalid beta parameter at index 0: {b1}")
        _require(0.0 <= b2 <= 1.0, f"Invalid beta parameter at index 1: {b2}")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, flatten=flatten, max_grad_norm=max_grad_norm,
                         norm_type=norm_type)

    def _tensor_state(self, group):
        return (("exp_avg", 0.0),)

    def _prepare(self, group):
        lr, (b1, b2), wd = _checked(group, "lr", "betas", "weight_decay")
        return kernel("lion"), bool(group["maximize"]), lr, b1, b2, wd

    def _rule(self, group, p, g, s, grad_scale, fresh, prep):
        fn, maximize, lr, b1, b2, wd = prep
        fn(p, g, p, s["exp_avg"], grad_scale, maximize, False, lr, b1, b2, wd)
