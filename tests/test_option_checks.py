"""The one table of option checks (fastgd._validate.OPTION_CHECKS) that every optimizer uses."""
import numpy as np
import pytest

import fastgd
from fastgd import _validate as check
from fastgd import functional as F
from fastgd.optim import Optimizer

OPTIMIZERS = [fastgd.Adam, fastgd.AdamW, fastgd.SGD, fastgd.Adagrad, fastgd.RMSprop,
              fastgd.Adamax, fastgd.NAdam, fastgd.RAdam, fastgd.Lion]


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_every_option_has_a_check(cls):
    opt = cls([np.zeros(3)])
    assert set(opt.defaults) <= set(check.OPTION_CHECKS)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_first_bad_option_in_constructor_order_is_reported(cls):
    # lr comes first in every constructor, so with lr and the last option both bad, lr is named.
    last = list(cls([np.zeros(3)]).defaults)[-1]
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        cls([{"params": [np.zeros(3)], "lr": -1.0, last: "bad"}])


def test_spec_option_without_a_check_is_refused_naming_it():
    import dataclasses
    from fastgd.rules import SPECS
    unchecked = dataclasses.replace(SPECS["sgd"], options=SPECS["sgd"].options + (("shrink", 0.5),))
    checked = dataclasses.replace(unchecked, checks={"shrink": check.fraction})

    class Custom(Optimizer):
        spec = unchecked

    with pytest.raises(TypeError, match="no check for its option 'shrink'"):
        Custom([np.zeros(3)])

    class Checked(Optimizer):
        spec = checked

    with pytest.raises(ValueError, match=r"shrink must be in \[0, 1\]"):
        Checked([np.zeros(3)], shrink=2.0)
    assert Checked([np.zeros(3)]).defaults["shrink"] == 0.5


def _arrays(n=3):
    return [np.zeros(4) for _ in range(n)]


@pytest.mark.parametrize("call, message", [
    (lambda p, g, m, v: F.adam_(p, g, m, v, step=1, lr=-1.0, foo=1), "unexpected keyword"),
    (lambda p, g, m, v: F.adam_(p, g, m, step=1, lr=-1.0), "missing a required argument: 'exp_avg_sq'"),
    (lambda p, g, m, v: F.adam_(p, g, m, v, param=p, step=1, lr=-1.0), "multiple values"),
    (lambda p, g, m, v: F.adam_(p, g, m, v, lr=-1.0), "missing a required argument: 'step'"),
    (lambda p, g, m, v: F.adam_(p, g, m, v, 1, step=1, lr=-1.0), "too many positional arguments"),
])
def test_functional_call_that_does_not_bind_raises_pythons_type_error_first(call, message):
    with pytest.raises(TypeError, match=message):
        call(*_arrays(4))


def test_functional_options_are_checked_in_signature_order_before_the_arrays():
    p, g, m, v = _arrays(4)
    with pytest.raises(TypeError, match="step must be an int"):
        F.nadam_(p, g, m, v, step=1.5, mu_product=2.0, lr=-1.0)
    with pytest.raises(ValueError, match=r"mu_product must be in \[0, 1\]"):
        F.nadam_(p, g, m, v, step=1, mu_product=2.0, lr=-1.0)
    with pytest.raises(ValueError, match="lr must be"):
        F.adam_("not an array", g, m, v, step=1, lr=-1.0)
    # by keyword too: positional parameters passed as keywords are still a call that binds
    with pytest.raises(ValueError, match="grad_scale must not be NaN"):
        F.lion_(param=p, grad=g, exp_avg=m, grad_scale=float("nan"))
