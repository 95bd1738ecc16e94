"""The update rules: one spec per rule (``SPECS``), and the variants that tests, benchmarks and
the CLI iterate over (``RULES``).

``SPECS[name]`` (fastgd/rules/<name>.py) is the only place above the kernels where a rule is
written: its options, state, step scalars and kernel call (see _spec.py). fastgd.functional,
fastgd.optim and fastgd.torch are built from it.

``RULES[name]`` is what a user benchmarks or verifies: an optimizer class with the options that
select a variant, its memory traffic, and its peer in torch.optim. Adding a rule means its spec
here, its reference, its two kernels, and its variants below; nothing else lists rules.
"""
from dataclasses import dataclass, field

from . import adagrad, adam, adamax, lion, nadam, radam, rmsprop, sgd
from ._spec import Spec, State  # noqa: F401

#: every rule's spec, by the rule's (and its kernel's) name
SPECS = {m.SPEC.name: m.SPEC for m in (adam, sgd, adagrad, rmsprop, adamax, nadam, radam, lion)}


@dataclass(frozen=True)
class Rule:
    """A variant of a rule: ``optimizer`` (a class of fastgd.optim) with ``options``; its memory
    traffic follows from the state its spec keeps under those options."""
    name: str                 # e.g. "adamw", "sgd_momentum"
    optimizer: str            # class name in fastgd (and in torch.optim when torch has it)
    options: dict = field(default_factory=dict)   # constructor options selecting the variant
    torch: str = None         # torch.optim class of the peer, None when torch has none
    torch_fused: bool = False  # torch has a fused CPU kernel for it (else its foreach is the peer)

    @property
    def spec(self):
        """The Spec of this variant's rule."""
        return self._cls().spec

    def _cls(self):
        import fastgd
        return getattr(fastgd, self.optimizer)

    @property
    def written(self):
        """Arrays read and written per element: the parameter and the state its options keep."""
        cls = self._cls()
        group = {**self.spec.defaults, **cls.fixed, **cls.overrides,
                 **{k: v for k, v in self.options.items() if k in self.spec.defaults}}
        # the options as given (not checked: a variant with a bad option is reported by the
        # benchmark that builds it, not refused here)
        return 1 + len(self.spec.state_names(group))

    @property
    def bytes_per_element(self):
        """float32 memory traffic of one step (float64: twice): the written arrays read and
        written, the gradient read, and the gradient read again by a clipping norm pass."""
        return 4 * (2 * self.written + 1 + ("max_grad_norm" in self.options))

    def make(self, params, **extra):
        """The fastgd optimizer of this rule over ``params``."""
        return self._cls()(params, **{**self.options, **extra})


# torch 2.13 has fused CPU kernels for Adam/AdamW, SGD and Adagrad only; the others' fastest
# torch peer is foreach. clip_adam: global-norm clipping fused into the step; its torch peer is
# clip_grad_norm_(foreach=True) then the optimizer (a peer that finds "max_grad_norm" in options
# pops it and clips first; torch.optim has no such option).
RULES = {r.name: r for r in [
    Rule("adam", "Adam", {}, torch="Adam", torch_fused=True),
    Rule("adamw", "AdamW", {"weight_decay": 1e-2}, torch="AdamW", torch_fused=True),
    Rule("amsgrad", "Adam", {"amsgrad": True}, torch="Adam", torch_fused=True),
    Rule("clip_adam", "Adam", {"max_grad_norm": 1.0}, torch="Adam", torch_fused=True),
    Rule("sgd", "SGD", {}, torch="SGD", torch_fused=True),
    Rule("sgd_momentum", "SGD", {"momentum": 0.9}, torch="SGD", torch_fused=True),
    Rule("sgd_nesterov", "SGD", {"momentum": 0.9, "nesterov": True}, torch="SGD", torch_fused=True),
    Rule("adagrad", "Adagrad", {}, torch="Adagrad", torch_fused=True),
    Rule("rmsprop", "RMSprop", {}, torch="RMSprop"),
    Rule("rmsprop_centered", "RMSprop", {"centered": True}, torch="RMSprop"),
    Rule("adamax", "Adamax", {}, torch="Adamax"),
    Rule("nadam", "NAdam", {}, torch="NAdam"),
    Rule("radam", "RAdam", {}, torch="RAdam"),
    Rule("lion", "Lion", {}, torch=None),
]}
