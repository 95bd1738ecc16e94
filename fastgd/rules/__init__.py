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
    name: str                 # e.g. "adamw", "sgd_momentum"
    optimizer: str            # class name in fastgd (and in torch.optim when torch has it)
    options: dict = field(default_factory=dict)   # constructor options selecting the variant
    bytes_per_element: int = 0    # float32 memory traffic of one step (twice that for float64)
    written: int = 1          # arrays read and written per element (param + state); grad is read only
    torch: str = None         # torch.optim class of the peer, None when torch has none
    torch_fused: bool = False  # torch has a fused CPU kernel for it (else its foreach is the peer)

    @property
    def spec(self):
        """The Spec of this variant's rule."""
        import fastgd
        return getattr(fastgd, self.optimizer).spec

    def make(self, params, **extra):
        """The fastgd optimizer of this rule over ``params``."""
        import fastgd
        return getattr(fastgd, self.optimizer)(params, **{**self.options, **extra})


RULES = {
    r.name: r
    for r in [
        Rule("adam", "Adam", {}, 28, 3, torch="Adam", torch_fused=True),
        Rule("adamw", "AdamW", {"weight_decay": 1e-2}, 28, 3, torch="AdamW", torch_fused=True),
        Rule("amsgrad", "Adam", {"amsgrad": True}, 36, 4, torch="Adam", torch_fused=True),
        # Global-norm clipping fused into the step: a read-only norm pass (4) + Adam (28). The
        # torch peer is clip_grad_norm_(foreach=True) then the optimizer: a peer that finds
        # "max_grad_norm" in options pops it and clips first (torch.optim has no such option).
        Rule("clip_adam", "Adam", {"max_grad_norm": 1.0}, 32, 3, torch="Adam", torch_fused=True),
    ]
}


# The optimizer family (issue 4). torch 2.13 has fused CPU kernels for SGD and Adagrad (and
# Adam/AdamW) only; the others' fastest torch peer is foreach.
for _r in [
    Rule("sgd", "SGD", {}, 12, 1, torch="SGD", torch_fused=True),
    Rule("sgd_momentum", "SGD", {"momentum": 0.9}, 20, 2, torch="SGD", torch_fused=True),
    Rule("sgd_nesterov", "SGD", {"momentum": 0.9, "nesterov": True}, 20, 2, torch="SGD",
         torch_fused=True),
    Rule("adagrad", "Adagrad", {}, 20, 2, torch="Adagrad", torch_fused=True),
    Rule("rmsprop", "RMSprop", {}, 20, 2, torch="RMSprop"),
    Rule("rmsprop_centered", "RMSprop", {"centered": True}, 28, 3, torch="RMSprop"),
    Rule("adamax", "Adamax", {}, 28, 3, torch="Adamax"),
    Rule("nadam", "NAdam", {}, 28, 3, torch="NAdam"),
    Rule("radam", "RAdam", {}, 28, 3, torch="RAdam"),
    Rule("lion", "Lion", {}, 20, 2, torch=None),
]:
    RULES[_r.name] = _r
del _r
