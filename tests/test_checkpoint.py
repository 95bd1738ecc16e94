"""Checkpoints (issue 8): every malformed state_dict is refused with a clear error and leaves the
optimizer unchanged; save -> load -> continue is bit-identical for every rule, directly, through
pickle and through np.savez (fastgd.checkpoint)."""
import copy
import io
import pickle

import numpy as np
import pytest

import fastgd
from fastgd import checkpoint
from fastgd.rules import RULES

SHAPES = [(17,), (4, 5), (3,)]


def _setup(rule, rng, dtype=np.float32):
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    opt = rule.make([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], lr=0.01)
    return params, opt


def _grads(rng, params, k):
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(k)]


def _fingerprint(opt, params):
    """Everything a load could change: groups, state (bytes), parameters."""
    sd = opt.state_dict()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    state = {i: {k: (v.tobytes(), v.dtype.str, v.shape) if isinstance(v, np.ndarray) else v
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return repr(groups), state, [p.tobytes() for p in params]


def _through_pickle(sd):
    return pickle.loads(pickle.dumps(sd))


def _through_savez(sd):
    buf = io.BytesIO()
    np.savez(buf, **checkpoint.to_arrays(sd))
    buf.seek(0)
    with np.load(buf) as f:       # allow_pickle=False: plain arrays only
        return checkpoint.from_arrays(f)


@pytest.mark.parametrize("via", [lambda sd: sd, _through_pickle, _through_savez],
                         ids=["direct", "pickle", "savez"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(RULES))
def test_save_load_continue_is_bit_identical(backend, rng, name, dtype, via):
    rule = RULES[name]
    params, opt = _setup(rule, rng, dtype)
    grads = _grads(rng, params, 12)
    for g in grads[:6]:
        opt.step(g)
    saved = via(opt.state_dict())
    snapshot = [p.copy() for p in params]
    for g in grads[6:]:
        opt.step(g)
    opt2 = rule.make([{"params": snapshot[:2]}, {"params": snapshot[2:]}], lr=99.0)
    opt2.load_state_dict(saved)
    for g in grads[6:]:
        opt2.step(g)
    assert [p.tobytes() for p in params] == [p.tobytes() for p in snapshot]
    assert _fingerprint(opt, params)[:2] == _fingerprint(opt2, snapshot)[:2]


def test_save_npz_helpers(tmp_path, rng):
    params, opt = _setup(RULES["amsgrad"], rng)
    opt.step(_grads(rng, params, 1)[0])
    path = tmp_path / "ckpt.npz"
    checkpoint.save_npz(path, opt, **{f"param{i}": p for i, p in enumerate(params)})
    params2 = [np.load(path)[f"param{i}"] for i in range(len(params))]
    opt2 = RULES["amsgrad"].make([{"params": params2[:2]}, {"params": params2[2:]}])
    checkpoint.load_npz(path, opt2)
    assert _fingerprint(opt, params) == _fingerprint(opt2, params2)


def _bad_state_dicts(good, params):
    """(description, malformed copy of ``good``) pairs: every way a checkpoint can be wrong."""
    def edit(fn):
        sd = copy.deepcopy(good)
        fn(sd)
        return sd
    s0 = good["state"][0]
    arrays = [k for k in s0 if k != "step"]
    first = arrays[0]
    n0 = params[0].size
    cases = {
        "not a dict": [good],
        "missing top key": {"state": good["state"]},
        "extra top key": {**good, "extra": 1},
        "state not a dict": {**good, "state": [s0]},
        "groups not a list": {**good, "param_groups": good["param_groups"][0]},
        "fewer groups": edit(lambda sd: sd["param_groups"].pop()),
        "more groups": edit(lambda sd: sd["param_groups"].append(copy.deepcopy(sd["param_groups"][1]))),
        "group without params": edit(lambda sd: sd["param_groups"][0].pop("params")),
        "params not a list": edit(lambda sd: sd["param_groups"][0].__setitem__("params", 0)),
        "wrong param count": edit(lambda sd: sd["param_groups"][0]["params"].pop()),
        "duplicate index": edit(lambda sd: sd["param_groups"][0].__setitem__("params", [0, 0])),
        "unknown option": edit(lambda sd: sd["param_groups"][0].__setitem__("momentum", 0.9)),
        "missing option": edit(lambda sd: sd["param_groups"][0].pop("eps")),
        "bad lr": edit(lambda sd: sd["param_groups"][1].__setitem__("lr", -1.0)),
        "nan lr": edit(lambda sd: sd["param_groups"][1].__setitem__("lr", float("nan"))),
        "bad betas": edit(lambda sd: sd["param_groups"][0].__setitem__("betas", (1.0, 0.5))),
        "bad flag": edit(lambda sd: sd["param_groups"][0].__setitem__("amsgrad", "yes")),
        "state of unknown param": edit(lambda sd: sd["state"].__setitem__(7, copy.deepcopy(s0))),
        "state key as str": edit(lambda sd: sd["state"].__setitem__("0", sd["state"].pop(0))),
        "a param state not a dict": edit(lambda sd: sd["state"].__setitem__(0, [1])),
        "missing state array": edit(lambda sd: sd["state"][0].pop(first)),
        "extra state array": edit(lambda sd: sd["state"][0].__setitem__("foo", np.zeros(n0, params[0].dtype))),
        "missing step": edit(lambda sd: sd["state"][0].pop("step")),
        "negative step": edit(lambda sd: sd["state"][0].__setitem__("step", -1)),
        "fractional step": edit(lambda sd: sd["state"][0].__setitem__("step", 1.5)),
        "None step": edit(lambda sd: sd["state"][0].__setitem__("step", None)),
        "str step": edit(lambda sd: sd["state"][0].__setitem__("step", "3")),
        "bool step": edit(lambda sd: sd["state"][0].__setitem__("step", True)),
        "short state": edit(lambda sd: sd["state"][0].__setitem__(first, s0[first][:-1].copy())),
        "long state": edit(lambda sd: sd["state"][0].__setitem__(first, np.zeros(n0 + 1, params[0].dtype))),
        "2-D state": edit(lambda sd: sd["state"][0].__setitem__(first, s0[first].reshape(1, -1).copy())),
        "float64 state": edit(lambda sd: sd["state"][0].__setitem__(first, s0[first].astype(np.float64))),
        "int state": edit(lambda sd: sd["state"][0].__setitem__(first, s0[first].astype(np.int32))),
        "object state": edit(lambda sd: sd["state"][0].__setitem__(first, [object()] * n0)),
        "state of a 20-element param on a 17-element one": edit(
            lambda sd: sd["state"].__setitem__(0, copy.deepcopy(sd["state"][1]))),
    }
    # Another optimizer's checkpoint (the kind): its options differ from this one's.
    foreign = edit(lambda sd: [g.clear() or g.update(params=p, lr=0.1, momentum=0.9, dampening=0.0,
                                                      nesterov=False, weight_decay=0.0, maximize=False)
                               for g, p in zip(sd["param_groups"], ([0, 1], [2]))])
    cases["an SGD-like state_dict"] = foreign
    return cases


@pytest.mark.parametrize("name", sorted(RULES))
def test_load_state_dict_refuses_and_changes_nothing(rng, name):
    params, opt = _setup(RULES[name], rng)
    for g in _grads(rng, params, 2):
        opt.step(g)
    good = opt.state_dict()
    before = _fingerprint(opt, params)
    refused = 0
    for what, bad in _bad_state_dicts(good, params).items():
        with pytest.raises((ValueError, TypeError)) as info:
            opt.load_state_dict(bad)
        assert len(str(info.value)) > 10, (what, info.value)           # a message, not a bare error
        assert _fingerprint(opt, params) == before, f"{what}: the optimizer changed"
        refused += 1
    assert refused >= 30
    opt.load_state_dict(good)                                          # and the good one loads
    assert _fingerprint(opt, params) == before


def test_optimizer_kind_adam_into_adamw_is_refused(rng):
    params = [rng.standard_normal(5).astype(np.float32)]
    adam = fastgd.Adam(params)
    adam.step([np.ones(5, np.float32)])
    adamw = fastgd.AdamW([p.copy() for p in params])
    with pytest.raises(ValueError, match="AdamW"):
        adamw.load_state_dict(adam.state_dict())
    assert adamw.state == {}
