"""What a rule spec is: the one place above the kernels where an update rule is written.

A spec says, for one rule:

- ``options``: its hyperparameters in torch.optim's constructor order, each with its default and
  its check (by name from ``fastgd._validate.OPTION_CHECKS`` unless the spec gives another);
  ``cross_check`` refuses combinations (SGD's nesterov); ``fixed`` names the options that select
  a different rule (AdamW's decoupled weight decay), which a checkpoint may not change;
- ``state``: the arrays it keeps per parameter (name, initial value, the option that switches
  it on), and ``scalar_state``: the per-parameter numbers beyond the step count (NAdam's
  mu_product), with their initial value and check;
- how its kernel is called: ``constants(o)``, the kernel scalars that depend only on the checked
  options (computed once per step and group), ``scalars(o, t, s, fresh)``, the ones that depend
  on the step count t, the scalar state s (updated in place) and whether the state arrays were
  created just now (computed once per array and step, in float64), and ``arrays(s)``, the state
  arrays in the kernel's order from the flat views ``s`` (the state arrays and ``s["param"]``;
  a variant that does not use an array passes another in its place, as the kernel contract
  asks).

The kernel is called as ``kernel(p, g, acc, *arrays, grad_scale, maximize, use_acc,
*constants, *scalars)`` (kernels/CONTRACT.md). The front ends (fastgd.functional,
fastgd.optim, fastgd.torch) and the tests' option grids are driven by specs; adding a rule is
its spec, its reference, its two kernels.
"""
from dataclasses import dataclass, field

from .. import _validate as check


@dataclass(frozen=True)
class State:
    """A state array like the parameter: ``init`` is its first value (a float, or the name of
    the option that gives it); ``when`` the bool option that switches it on, or a predicate
    of the checked options (then ``option`` names the option it reads); None: always there.
    ``arg``: its argument's name in fastgd.functional where that differs (torch's functional
    names Adagrad's ``sum`` ``state_sum``). ``signed8``/``signed4``: whether it is quantized on
    the signed map (a first moment) or the unsigned one (a second moment, >= 0) at 8 and 4 bits
    (fastgd/formats.py codes 5-8). At 8 bits the maps are bitsandbytes': its one-state
    optimizers (RMSprop, Adagrad) keep even their second moment on the signed map, and so does
    fastgd, so their states interchange; at 4 bits a second moment is on the linear map
    without zero."""
    name: str
    init: object = 0.0
    when: object = None
    option: str = None
    arg: str = None
    signed8: bool = True
    signed4: bool = True

    @property
    def argument(self):
        return self.arg or self.name

    def describe(self, o):
        """The option setting that needs this array, e.g. "amsgrad=True", "momentum=0.9"."""
        name = self.when if isinstance(self.when, str) else self.option
        return f"{name}={o[name]!r}"

    def needed(self, o):
        if self.when is None:
            return True
        if isinstance(self.when, str):
            return bool(o[self.when])
        return bool(self.when(o))

    def initial(self, o):
        return float(o[self.init]) if isinstance(self.init, str) else self.init


@dataclass(frozen=True)
class Spec:
    name: str                       # the kernel's name, and the rule's
    options: tuple                  # ((name, default), ...) in torch.optim's order
    state: tuple                    # (State, ...) in torch's order
    arrays: object                  # s -> state arrays in the kernel's order
    constants: object               # o -> kernel scalars from the options alone
    scalars: object = None          # (o, t, s, fresh) -> kernel scalars of this step
    scalar_state: tuple = ()        # ((name, initial value, check), ...) beyond "step"
    cross_check: object = None      # o -> None, raising on a bad combination of options
    fixed: tuple = ()               # options a loaded state_dict must not change
    checks: dict = field(default_factory=dict)   # option -> check, where not OPTION_CHECKS'
    torch_step: bool = True         # torch keeps a "step" in the state (SGD and Lion do not)
    doc: str = ""                   # the update, as the optimizers' docstrings show it

    @property
    def defaults(self):
        return dict(self.options)

    def check_option(self, name, value):
        """The checked (normalised) value of option ``name``; TypeError/ValueError naming it."""
        fn = self.checks.get(name) or check.OPTION_CHECKS.get(name)
        if fn is None:
            raise TypeError(f"rule {self.name!r} has no check for its option {name!r}; give one in "
                            "its spec's checks (or add it to fastgd._validate.OPTION_CHECKS)")
        return fn(name, value)

    def check_options(self, group):
        """{name: checked value} of every option of this rule in ``group`` (a mapping with all
        of them), in the constructor's order; the combination is checked too."""
        o = {name: self.check_option(name, group[name]) for name, _ in self.options}
        if self.cross_check is not None:
            self.cross_check(o)
        return o

    def state_names(self, o):
        """Names of the state arrays a parameter needs under the checked options ``o``."""
        return tuple(s.name for s in self.state if s.needed(o))

    def docstring(self, title, note=""):
        """A front end's docstring of this rule: ``title``, the update as ``doc`` states it, and
        a ``note``."""
        return f"{title}\n\n" + "\n".join("    " + line for line in self.doc.splitlines()) + (
            f"\n\n{note}" if note else "")
