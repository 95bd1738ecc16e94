"""The one table of option checks (fastgd._validate.OPTION_CHECKS) that every optimizer uses."""
import numpy as np
import pytest

import fastgd
from fastgd import _validate as check
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


def test_subclass_option_without_a_check_is_refused_naming_it():
    class Custom(Optimizer):
        def __init__(self, params, lr=0.1, shrink=0.5):
            super().__init__(params, lr=lr, shrink=shrink)

    with pytest.raises(TypeError, match="no check for its option 'shrink'"):
        Custom([np.zeros(3)])

    class Checked(Custom):
        option_checks = {**check.OPTION_CHECKS, "shrink": check.fraction}

    with pytest.raises(ValueError, match=r"shrink must be in \[0, 1\]"):
        Checked([np.zeros(3)], shrink=2.0)
    assert Checked([np.zeros(3)]).defaults["shrink"] == 0.5
