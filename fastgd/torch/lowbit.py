"""8-bit and 4-bit optimizers for torch, under the names users know, and bitsandbytes' state_dict.

    import fastgd.torch as ft
    opt = ft.AdamW8bit(model.parameters(), lr=1e-3)          # bitsandbytes' AdamW8bit
    opt = ft.AdamW4bit(model.parameters(), lr=1e-3)          # torchao's AdamW4bit

Each class is its fastgd.torch rule with ``optim_bits`` set (fastgd/formats.py codes 5-8: the
states quantized block-wise, dequantized, updated and quantized again in the kernel's one pass)
and the constructor of its namesake: bitsandbytes 0.50.2's for the 8-bit ones (``optim_bits``,
``min_8bit_size``: tensors smaller keep float32 states, as bitsandbytes does; ``args`` and
``is_paged`` are refused unless None/False), torchao 0.18's for the 4-bit ones (``block_size``
must be 128). Every fastgd.torch keyword (``maximize``, ``max_grad_norm``, ``master_weights``,
``state_dtype`` for the small tensors, ...) works too.

Arithmetic as the namesake's: bitsandbytes' ``Adam8bit`` decays weights decoupled, as its
kernel does (it is ``AdamW8bit`` with weight_decay 0 by default); torchao's ``Adam4bit`` adds
weight_decay * p to the gradient (coupled), ``AdamW4bit`` decouples it.

Interchange with bitsandbytes: ``state_dict()`` of an 8-bit class is in bitsandbytes' layout
(per parameter ``step`` an int and ``state1``/``absmax1``/``qmap1``/... wrapped in its
``"__bnb_optimizer_quant_state__"`` dict, or float32 ``state1``/``state2`` below
min_8bit_size; param groups with bitsandbytes' keys beside fastgd's), so
``bnb.optim.AdamW8bit.load_state_dict`` takes it, and ``load_state_dict`` takes bitsandbytes'
state_dict (or fastgd's own layout). The codes are bitsandbytes' CPU codes bit for bit
(fastgd/quant.py), so training continues as it would have there. A map (``qmap1``) other than
bitsandbytes' dynamic map is refused, as are codes, absmax or block sizes that do not fit their
parameter, a non-finite absmax, or a quantized state given to a float optimizer.
"""
import inspect

import numpy as np
import torch

from .. import formats
from .._core import absmax_name
from . import SGD, Adagrad, Adam, AdamW, Lion, RMSprop   # fastgd.torch's, defined before this import

#: bitsandbytes wraps the quantized tensors of a parameter's state in this dict
BNB_WRAPPED = "__bnb_optimizer_quant_state__"


class _Bnb:
    """Mixin of the 8-bit classes: bitsandbytes' state_dict layout in both directions.

    ``bnb_states``: fastgd's state names in bitsandbytes' order (state1, state2);
    ``to_bnb_group(group)`` / ``from_bnb_group(saved, mine)``: the param-group keys."""

    bnb_states = ()

    # --- groups ---------------------------------------------------------------------------------

    @staticmethod
    def to_bnb_group(g):
        return {}

    @staticmethod
    def from_bnb_group(saved, mine):
        return {}

    # --- state ----------------------------------------------------------------------------------

    def _bnb_layout(self):
        """Whether this optimizer's states have bitsandbytes' names (no amsgrad, momentum of
        RMSprop, ...): then its state_dict is in bitsandbytes' layout."""
        return all(set(self.spec.state_names(self._check_group(g))) <= set(self.bnb_states)
                   for g in self.param_groups)

    def state_dict(self):
        sd = super().state_dict()
        if not self._bnb_layout():
            return sd
        state = {}
        for k, s in sd["state"].items():
            out = {"step": int(s["step"].item()) if "step" in s else (1 if s else 0)}
            wrapped = {}
            for j, name in enumerate(self.bnb_states, 1):
                if name not in s:
                    continue
                if absmax_name(name) in s:
                    code = formats.quantized_code(8, next(x for x in self.spec.state
                                                          if x.name == name).signed8)
                    wrapped[f"state{j}"] = s[name]
                    wrapped[f"qmap{j}"] = torch.from_numpy(formats.qmap_of(code).copy())
                    wrapped[f"absmax{j}"] = s[absmax_name(name)]
                else:
                    out[f"state{j}"] = s[name]
            if wrapped:
                out[BNB_WRAPPED] = wrapped
            state[k] = out
        groups = [{**g, **self.to_bnb_group(g)} for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        if isinstance(state_dict, dict) and self._is_bnb(state_dict):
            state_dict = self._from_bnb(state_dict)
        super().load_state_dict(state_dict)

    def _is_bnb(self, sd):
        """Whether ``sd`` is in bitsandbytes' layout: its states' names, or (no state yet) its
        param groups' keys."""
        states, groups = sd.get("state"), sd.get("param_groups")
        if isinstance(states, dict) and any(isinstance(s, dict) and (BNB_WRAPPED in s or "state1" in s)
                                            for s in states.values()):
            return True
        theirs = set(self.to_bnb_group(self.param_groups[0])) - set(self.defaults)
        return bool(theirs) and isinstance(groups, (list, tuple)) and any(
            isinstance(g, dict) and theirs & set(g) for g in groups)

    def _from_bnb(self, sd):
        name = type(self).__name__
        groups = sd.get("param_groups")
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: the bitsandbytes state_dict has "
                             f"{len(groups) if isinstance(groups, (list, tuple)) else 'no'} param "
                             f"groups; this optimizer has {len(self.param_groups)}")
        new_groups = []
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"{name}: param_groups[{i}] of the state_dict is not a dict")
            ours = {k: v for k, v in saved.items() if k in mine or k == "params"}
            for k, v in mine.items():
                if k not in ours and k != "params":
                    ours[k] = v
            try:
                ours.update(self.from_bnb_group(saved, mine))
            except ValueError as exc:
                raise ValueError(f"{name}: param_groups[{i}] of the state_dict: {exc}") from None
            new_groups.append(ours)
        state = {}
        for k, s in sd["state"].items():
            if not isinstance(s, dict):
                raise ValueError(f"{name}: the state of parameter {k!r} is not a dict")
            s = dict(s)
            s.update(s.pop(BNB_WRAPPED, None) or {})
            out = {}
            if "step" in s and self.spec.torch_step:
                out["step"] = s.pop("step")
            else:
                s.pop("step", None)
            for j, ours in enumerate(self.bnb_states, 1):
                if f"state{j}" in s:
                    out[ours] = s.pop(f"state{j}")
                if f"absmax{j}" in s:
                    out[absmax_name(ours)] = s.pop(f"absmax{j}")
                qmap = s.pop(f"qmap{j}", None)
                if qmap is not None:
                    code = formats.quantized_code(8, next(x for x in self.spec.state
                                                          if x.name == ours).signed8)
                    q = qmap.detach().cpu().numpy() if isinstance(qmap, torch.Tensor) else np.asarray(qmap)
                    if q.shape != (256,) or not np.array_equal(q.astype(np.float32), formats.qmap_of(code)):
                        raise ValueError(f"{name}: qmap{j} of parameter {k!r} is not bitsandbytes' "
                                         f"{'signed' if formats.QUANTIZED[code][1] else 'unsigned'} "
                                         "dynamic map, the only map fastgd's 8-bit states use")
            s.pop("unorm_vec", None)
            if s:
                raise ValueError(f"{name}: the state of parameter {k!r} has keys {sorted(s)} that "
                                 "fastgd does not keep (a bitsandbytes option fastgd lacks?)")
            state[k] = out
        return {"state": state, "param_groups": new_groups}


def _refuse(name, args, is_paged=False):
    if args is not None:
        raise TypeError(f"{name}: args= (bitsandbytes' argument object) is not supported; pass "
                        "the options as arguments")
    if is_paged:
        raise ValueError(f"{name}: is_paged=True (CUDA unified memory) has no meaning on the CPU")


def _block(name, block_size):
    if block_size != formats.block_of(formats.Q4_SIGNED):
        raise ValueError(f"{name}: block_size must be 128 (the 4-bit format's blocks); got "
                         f"{block_size!r}")


class AdamW8bit(_Bnb, AdamW):
    """bitsandbytes' AdamW8bit: AdamW with 8-bit block-wise states (module docstring)."""
    bnb_states = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, optim_bits=8, args=None, min_8bit_size=4096, is_paged=False,
                 **kwargs):
        _refuse(type(self).__name__, args, is_paged)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                         **kwargs)

    @staticmethod
    def to_bnb_group(g):
        return {"alpha": 0.0, "t_alpha": None, "t_beta3": None}

    @staticmethod
    def from_bnb_group(saved, mine):
        if saved.get("alpha", 0.0) not in (0, 0.0) or saved.get("t_alpha") is not None \
                or saved.get("t_beta3") is not None:
            raise ValueError("alpha/t_alpha/t_beta3 are AdEMAMix's, which fastgd does not have")
        return {}


class Adam8bit(AdamW8bit):
    """bitsandbytes' Adam8bit: its kernel decays weights decoupled as AdamW does (default
    weight_decay 0), and so does this one."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, optim_bits=8, args=None, min_8bit_size=4096, is_paged=False,
                 **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, optim_bits, args,
                         min_8bit_size, is_paged, **kwargs)


class SGD8bit(_Bnb, SGD):
    """bitsandbytes' SGD8bit: SGD whose momentum buffer is 8-bit (torch.optim.SGD's
    arithmetic: dampening and nesterov work too, which bitsandbytes' CPU step lacks)."""
    bnb_states = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 args=None, min_8bit_size=4096, **kwargs):
        _refuse(type(self).__name__, args)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, optim_bits=8,
                         min_8bit_size=min_8bit_size, **kwargs)

    @staticmethod
    def to_bnb_group(g):
        return {"betas": (g["momentum"], g["dampening"]), "eps": 0.0}

    @staticmethod
    def from_bnb_group(saved, mine):
        b = saved.get("betas")
        return {} if b is None else {"momentum": b[0], "dampening": b[1]}


class Lion8bit(_Bnb, Lion):
    """bitsandbytes' Lion8bit: Lion with an 8-bit momentum."""
    bnb_states = ("exp_avg",)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None,
                 min_8bit_size=4096, is_paged=False, **kwargs):
        _refuse(type(self).__name__, args, is_paged)
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, optim_bits=8,
                         min_8bit_size=min_8bit_size, **kwargs)

    @staticmethod
    def to_bnb_group(g):
        return {"eps": 0.0}


class RMSprop8bit(_Bnb, RMSprop):
    """bitsandbytes' RMSprop8bit: RMSprop with an 8-bit square average (on bitsandbytes'
    signed map, as it keeps it; momentum and centered work too, with 8-bit buffers)."""
    bnb_states = ("square_avg",)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, args=None, min_8bit_size=4096, **kwargs):
        _refuse(type(self).__name__, args)
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, optim_bits=8,
                         min_8bit_size=min_8bit_size, **kwargs)

    @staticmethod
    def to_bnb_group(g):
        return {"betas": (g["alpha"], g["momentum"])}

    @staticmethod
    def from_bnb_group(saved, mine):
        b = saved.get("betas")
        return {} if b is None else {"alpha": b[0], "momentum": b[1]}


class Adagrad8bit(_Bnb, Adagrad):
    """bitsandbytes' Adagrad8bit: Adagrad with an 8-bit sum of squares (on bitsandbytes'
    signed map, as it keeps it)."""
    bnb_states = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, optim_bits=8, args=None, min_8bit_size=4096, **kwargs):
        _refuse(type(self).__name__, args)
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         optim_bits=optim_bits, min_8bit_size=min_8bit_size, **kwargs)

    @staticmethod
    def to_bnb_group(g):
        return {"betas": (0.0, 0.0)}

    @staticmethod
    def from_bnb_group(saved, mine):
        b = saved.get("betas")
        if b is not None and tuple(b) != (0.0, 0.0):
            raise ValueError(f"Adagrad8bit's betas are (0.0, 0.0) in bitsandbytes; got {b!r}")
        return {}


class AdamW4bit(AdamW):
    """torchao's AdamW4bit: AdamW with 4-bit block-wise states (blocks of 128; the first
    moment on the signed dynamic map, the second on the linear map without zero)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, block_size=128, **kwargs):
        _block(type(self).__name__, block_size)
        kwargs.setdefault("optim_bits", 4)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, **kwargs)


class Adam4bit(Adam):
    """torchao's Adam4bit: Adam (weight decay added to the gradient) with 4-bit states."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, block_size=128, **kwargs):
        _block(type(self).__name__, block_size)
        kwargs.setdefault("optim_bits", 4)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, **kwargs)


_NOTE = ("States of parameters of at least min_8bit_size elements are quantized block-wise "
         "(fastgd/quant.py), dequantized, updated and quantized again in the step's one pass; "
         "smaller ones keep float32 states (state_dtype). See the module docstring.")


def _own_signature(cls):
    """The class's constructor signature (its namesake's), not its rule class's, and its
    docstring with the rule's update."""
    sig = inspect.signature(cls.__init__)
    cls.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    cls.__doc__ = cls.spec.docstring(" ".join(cls.__doc__.split()), _NOTE)


for _cls in (AdamW8bit, Adam8bit, SGD8bit, Lion8bit, RMSprop8bit, Adagrad8bit, AdamW4bit, Adam4bit):
    _own_signature(_cls)
