"""The family's bad input: a clear TypeError/ValueError naming the argument, every array unchanged."""
import numpy as np
import pytest

import fastgd
from fastgd import functional as F

N = 33

# rule -> (state array names, indices that must be > 0, call(param, grad, states, **kw))
RULES = {
    "sgd": (("momentum_buffer",), (),
            lambda p, g, s, **kw: F.sgd_(p, g, **{"momentum_buffer": s["momentum_buffer"], "step": 3,
                                                  "momentum": 0.9, **kw})),
    "adagrad": (("state_sum",), (0,),
                lambda p, g, s, **kw: F.adagrad_(p, g, s["state_sum"], **{"step": 3, **kw})),
    "rmsprop": (("square_avg", "momentum_buffer", "grad_avg"), (0,),
                lambda p, g, s, **kw: F.rmsprop_(p, g, s["square_avg"], **{
                    "momentum": 0.9, "centered": True, "momentum_buffer": s["momentum_buffer"],
                    "grad_avg": s["grad_avg"], **kw})),
    "adamax": (("exp_avg", "exp_inf"), (1,),
               lambda p, g, s, **kw: F.adamax_(p, g, s["exp_avg"], s["exp_inf"], **{"step": 3, **kw})),
    "nadam": (("exp_avg", "exp_avg_sq"), (1,),
              lambda p, g, s, **kw: F.nadam_(p, g, s["exp_avg"], s["exp_avg_sq"],
                                             **{"step": 3, "mu_product": 0.8, **kw})),
    "radam": (("exp_avg", "exp_avg_sq"), (1,),
              lambda p, g, s, **kw: F.radam_(p, g, s["exp_avg"], s["exp_avg_sq"], **{"step": 9, **kw})),
    "lion": (("exp_avg",), (),
             lambda p, g, s, **kw: F.lion_(p, g, s["exp_avg"], **kw)),
}


def _arrays(rng, rule, dtype=np.float32):
    names, positive, _ = RULES[rule]
    out = {"param": rng.standard_normal(N).astype(dtype), "grad": rng.standard_normal(N).astype(dtype)}
    for i, name in enumerate(names):
        a = rng.standard_normal(N).astype(dtype)
        out[name] = np.abs(a) + 1 if i in positive else a * 0.1
    return out


def _expect_error(rng, rule, exc, match, mutate=None, **kw):
    arrays = _arrays(rng, rule)
    if mutate:
        mutate(arrays)
    before = {k: np.array(v, copy=True) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    states = {k: v for k, v in arrays.items() if k not in ("param", "grad")}
    with pytest.raises(exc, match=match):
        RULES[rule][2](arrays["param"], arrays["grad"], states, **kw)
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(arrays[k]), v, err_msg=f"{k} was modified")


COMMON = [
    (ValueError, "lr", dict(lr=-1e-3)),
    (ValueError, "lr", dict(lr=float("nan"))),
    (ValueError, "lr", dict(lr=float("inf"))),
    (TypeError, "lr", dict(lr="0.1")),
    (ValueError, "weight_decay", dict(weight_decay=-0.1)),
    (ValueError, "grad_scale", dict(grad_scale=float("inf"))),
    (TypeError, "maximize", dict(maximize="yes")),
]
SPECIFIC = {
    "sgd": [(ValueError, "momentum", dict(momentum=-0.9)),
            (ValueError, "dampening", dict(dampening=1.5)),
            (ValueError, "nesterov", dict(nesterov=True, dampening=0.1)),
            (ValueError, "nesterov", dict(nesterov=True, momentum=0.0)),
            (ValueError, "momentum_buffer", dict(momentum_buffer=None)),
            (ValueError, "step", dict(step=0)),
            (TypeError, "step", dict(step=1.0))],
    "adagrad": [(ValueError, "lr_decay", dict(lr_decay=-0.1)),
                (ValueError, "eps", dict(eps=0.0)),
                (ValueError, "step", dict(step=-1))],
    "rmsprop": [(ValueError, "alpha", dict(alpha=1.0)),
                (ValueError, "alpha", dict(alpha=-0.1)),
                (ValueError, "eps", dict(eps=-1e-8)),
                (ValueError, "momentum", dict(momentum=-0.5)),
                (ValueError, "momentum_buffer", dict(momentum_buffer=None)),
                (ValueError, "grad_avg", dict(grad_avg=None)),
                (TypeError, "centered", dict(centered=1))],
    "adamax": [(ValueError, r"betas\[0\]", dict(betas=(1.0, 0.9))),
               (ValueError, r"betas\[1\]", dict(betas=(0.9, 1.5))),
               (TypeError, "betas", dict(betas=0.9)),
               (ValueError, "eps", dict(eps=0.0))],
    "nadam": [(ValueError, "momentum_decay", dict(momentum_decay=-1.0)),
              (ValueError, "mu_product", dict(mu_product=1.5)),
              (ValueError, "mu_product", dict(mu_product=float("nan"))),
              (ValueError, r"betas\[1\]", dict(betas=(0.9, 1.0))),
              (TypeError, "decoupled_weight_decay", dict(decoupled_weight_decay=None)),
              (ValueError, "step", dict(step=0))],
    "radam": [(ValueError, r"betas\[0\]", dict(betas=(-0.1, 0.9))),
              (ValueError, "eps", dict(eps=0.0)),
              (TypeError, "decoupled_weight_decay", dict(decoupled_weight_decay="no"))],
    "lion": [(ValueError, r"betas\[1\]", dict(betas=(0.9, 1.0))),
             (TypeError, "betas", dict(betas=(0.9,)))],
}
HYPER = [(rule, *case) for rule in RULES for case in COMMON + SPECIFIC[rule]]


@pytest.mark.parametrize("rule,exc,match,kw", HYPER, ids=[f"{c[0]}-{c[3]}" for c in HYPER])
def test_bad_hyperparameters(rng, rule, exc, match, kw):  # validation precedes any backend
    _expect_error(rng, rule, exc, match, **kw)


def _array_cases(rule):
    first = RULES[rule][0][0]
    last = RULES[rule][0][-1]

    def noncontig(a):
        a[last] = np.repeat(a[last], 2)[::2]

    def readonly(a):
        a[first].flags.writeable = False

    return [
        (TypeError, "grad", lambda a: a.update(grad=list(a["grad"]))),
        (TypeError, "param", lambda a: a.update(param=np.arange(N))),
        (TypeError, first, lambda a: a.update({first: a[first].astype(np.float64)})),
        (ValueError, last, lambda a: a.update({last: a[last][:-1].copy()})),
        (ValueError, "C-contiguous", noncontig),
        (ValueError, "read-only", readonly),
        (ValueError, "share memory", lambda a: a.update({last: a["param"]})),
        (ValueError, "share memory", lambda a: a.update({first: a["grad"]})),
        (TypeError, "float32 or float64", lambda a: a.update(param=a["param"].astype(np.float16))),
        (TypeError, "native byte order", lambda a: a.update(param=a["param"].astype(">f4"))),
    ]


ARRAYS = [(rule, i) for rule in RULES for i in range(len(_array_cases(rule)))]


@pytest.mark.parametrize("rule,i", ARRAYS, ids=[f"{r}-{i}" for r, i in ARRAYS])
def test_bad_arrays(rng, rule, i):
    exc, match, mutate = _array_cases(rule)[i]
    _expect_error(rng, rule, exc, match, mutate=mutate)


def test_rmsprop_state_aliasing_between_optional_arrays(rng):
    a = _arrays(rng, "rmsprop")
    with pytest.raises(ValueError, match="share memory"):
        F.rmsprop_(a["param"], a["grad"], a["square_avg"], momentum=0.9, centered=True,
                   momentum_buffer=a["grad_avg"], grad_avg=a["grad_avg"])


@pytest.mark.parametrize("rule", list(RULES))
def test_grad_may_be_read_only(backend, rng, rule):
    """A read-only gradient is accepted, left unchanged, and gives the step a writable one gives."""
    a = _arrays(rng, rule)
    b = {k: v.copy() for k, v in a.items()}     # the same step with a writable gradient
    param0, grad0 = a["param"].copy(), a["grad"].copy()
    a["grad"].flags.writeable = False
    for arrays in (a, b):
        RULES[rule][2](arrays["param"], arrays["grad"],
                       {k: v for k, v in arrays.items() if k not in ("param", "grad")})
    assert np.any(a["param"] != param0)          # the step was taken
    np.testing.assert_array_equal(a["grad"], grad0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- optimizer classes ----------------------------------------------------------------------------

CLASS_CASES = [
    ("SGD", dict(lr=-1.0), "lr"), ("SGD", dict(momentum=-0.1), "momentum"),
    ("SGD", dict(weight_decay=-1.0), "weight_decay"), ("SGD", dict(dampening=2.0), "dampening"),
    ("SGD", dict(nesterov=True), "nesterov"), ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    ("Adagrad", dict(lr_decay=-1.0), "lr_decay"), ("Adagrad", dict(eps=0.0), "eps"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    ("RMSprop", dict(alpha=1.0), "alpha"), ("RMSprop", dict(momentum=-1.0), "momentum"),
    ("RMSprop", dict(eps=-1.0), "eps"), ("RMSprop", dict(centered="yes"), "centered"),
    ("Adamax", dict(betas=(0.9, 1.0)), "betas"), ("Adamax", dict(eps=0.0), "eps"),
    ("NAdam", dict(momentum_decay=-0.1), "momentum_decay"), ("NAdam", dict(betas=(1.0, 0.9)), "betas"),
    ("NAdam", dict(decoupled_weight_decay=1), "decoupled_weight_decay"),
    ("RAdam", dict(weight_decay=-0.1), "weight_decay"), ("RAdam", dict(eps=float("nan")), "eps"),
    ("Lion", dict(lr=-1e-4), "lr"), ("Lion", dict(betas=(0.9, 1.0)), "betas"),
    ("Lion", dict(maximize=None), "maximize"),
]


@pytest.mark.parametrize("cls,kw,match", CLASS_CASES, ids=[f"{c}-{k}" for c, k, _ in CLASS_CASES])
def test_optimizer_rejects_bad_options(cls, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(fastgd, cls)([np.ones(3, np.float32)], **kw)


@pytest.mark.parametrize("cls", ["SGD", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Lion"])
def test_bad_group_edit_is_refused_at_step_and_changes_nothing(backend, rng, cls):
    params = [rng.standard_normal(5)]
    opt = getattr(fastgd, cls)(params)
    opt.step([rng.standard_normal(5)])
    before = params[0].copy()
    state_before = {k: np.copy(v) for k, v in opt.state[0].items()}
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([rng.standard_normal(5)])
    np.testing.assert_array_equal(params[0], before)
    for k, v in opt.state[0].items():
        np.testing.assert_array_equal(v, state_before[k])


def test_nadam_state_dict_refuses_bad_mu_product(rng):
    opt = fastgd.NAdam([rng.standard_normal(4)])
    opt.step([rng.standard_normal(4)])
    sd = opt.state_dict()
    sd["state"][0]["mu_product"] = float("nan")
    with pytest.raises(ValueError, match="mu_product"):
        opt.load_state_dict(sd)
    sd["state"][0]["mu_product"] = "x"
    with pytest.raises(TypeError, match="mu_product"):
        opt.load_state_dict(sd)


def test_state_dict_options_must_match_state(rng):
    """A checkpoint of SGD without momentum cannot be loaded into groups that need a buffer."""
    plain = fastgd.SGD([rng.standard_normal(4)], lr=0.1)
    plain.step([rng.standard_normal(4)])
    heavy = fastgd.SGD([rng.standard_normal(4)], lr=0.1, momentum=0.9)
    sd = plain.state_dict()
    sd["param_groups"][0]["momentum"] = 0.9
    with pytest.raises(ValueError, match="momentum_buffer"):
        heavy.load_state_dict(sd)
