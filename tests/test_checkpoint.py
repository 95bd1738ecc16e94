"""Checkpoints (issue 8): every malformed state_dict is refused with a clear error and leaves the
optimizer unchanged; save -> load -> continue is bit-identical for every rule, directly, through
pickle and through np.savez (fastgd.checkpoint)."""
import copy
import io
import json
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


# Options of other optimizers, one of which each optimizer lacks (an "unknown option").
_FOREIGN_OPTIONS = ("momentum", "amsgrad", "lr_decay", "centered")
# Two foreign param groups: a state_dict of another kind of optimizer is one of these (the one
# whose options are not this optimizer's).
_SGD_LIKE = dict(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False)
_ADAM_LIKE = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)


def _bad_state_dicts(good, params):
    """(description, malformed copy of ``good``) pairs: every way a checkpoint can be wrong.

    Derived from ``good`` itself, since optimizers differ in options (SGD has no eps or betas)
    and in state: no arrays at all (SGD without momentum), one (Lion), a float besides the step
    (NAdam's mu_product). Cases a kind cannot have (a bad state array when there is none) are
    left out for it; the test still requires 30 or more refusals from every optimizer."""
    def edit(fn):
        sd = copy.deepcopy(good)
        fn(sd)
        return sd
    s0 = good["state"][0]
    group0 = good["param_groups"][0]
    options = [k for k in group0 if k != "params"]
    arrays = [k for k in s0 if isinstance(s0[k], np.ndarray)]
    scalars = [k for k in s0 if k != "step" and k not in arrays]
    n0 = params[0].size
    unknown = next(k for k in _FOREIGN_OPTIONS if k not in group0)
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
        f"unknown option {unknown}": edit(lambda sd: sd["param_groups"][0].__setitem__(unknown, 0.9)),
        "bad lr": edit(lambda sd: sd["param_groups"][1].__setitem__("lr", -1.0)),
        "nan lr": edit(lambda sd: sd["param_groups"][1].__setitem__("lr", float("nan"))),
        "str lr": edit(lambda sd: sd["param_groups"][1].__setitem__("lr", "0.1")),
        "bad weight_decay": edit(lambda sd: sd["param_groups"][0].__setitem__("weight_decay", -1.0)),
        "state of unknown param": edit(lambda sd: sd["state"].__setitem__(7, copy.deepcopy(s0))),
        "state key as str": edit(lambda sd: sd["state"].__setitem__("0", sd["state"].pop(0))),
        "a param state not a dict": edit(lambda sd: sd["state"].__setitem__(0, [1])),
        "extra state array": edit(lambda sd: sd["state"][0].__setitem__("foo", np.zeros(n0, params[0].dtype))),
        "missing step": edit(lambda sd: sd["state"][0].pop("step")),
        "negative step": edit(lambda sd: sd["state"][0].__setitem__("step", -1)),
        "fractional step": edit(lambda sd: sd["state"][0].__setitem__("step", 1.5)),
        "None step": edit(lambda sd: sd["state"][0].__setitem__("step", None)),
        "str step": edit(lambda sd: sd["state"][0].__setitem__("step", "3")),
        "bool step": edit(lambda sd: sd["state"][0].__setitem__("step", True)),
    }
    for k in options:       # every option is required, and a flag must be a bool
        cases[f"missing option {k}"] = edit(lambda sd, k=k: sd["param_groups"][0].pop(k))
        if isinstance(group0[k], bool):
            cases[f"bad flag {k}"] = edit(lambda sd, k=k: sd["param_groups"][0].__setitem__(k, "yes"))
    if "betas" in group0:
        cases["bad betas"] = edit(lambda sd: sd["param_groups"][0].__setitem__("betas", (1.0, 0.5)))
    for k in arrays:        # every state array must be there, flat or param-shaped, of its dtype
        cases.update({
            f"missing state array {k}": edit(lambda sd, k=k: sd["state"][0].pop(k)),
            f"short {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, s0[k][:-1].copy())),
            f"long {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, np.zeros(n0 + 1, params[0].dtype))),
            f"2-D {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, s0[k].reshape(1, -1).copy())),
            f"float64 {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, s0[k].astype(np.float64))),
            f"int {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, s0[k].astype(np.int32))),
            f"object {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, [object()] * n0)),
        })
    if arrays:
        cases["state of a 20-element param on a 17-element one"] = edit(
            lambda sd: sd["state"].__setitem__(0, copy.deepcopy(sd["state"][1])))
    for k in scalars:       # scalar state besides the step (NAdam's mu_product): a finite float
        cases.update({
            f"missing {k}": edit(lambda sd, k=k: sd["state"][0].pop(k)),
            f"nan {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, float("nan"))),
            f"inf {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, float("inf"))),
            f"str {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, "0.5")),
            f"None {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, None)),
            f"array {k}": edit(lambda sd, k=k: sd["state"][0].__setitem__(k, np.ones(2))),
        })
    # Another optimizer's checkpoint (the kind): its options differ from this one's.
    other = _ADAM_LIKE if set(options) == set(_SGD_LIKE) else _SGD_LIKE
    foreign = edit(lambda sd: [g.clear() or g.update(params=p, **other)
                               for g, p in zip(sd["param_groups"], ([0, 1], [2]))])
    cases["another optimizer's state_dict"] = foreign
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


# --- tampered np.savez files (fastgd.checkpoint.from_arrays) -------------------------------------

def _saved_arrays(rng, name="nadam"):
    """to_arrays of a real checkpoint (NAdam: state arrays, a step and the float mu_product)."""
    params, opt = _setup(RULES[name], rng)
    for g in _grads(rng, params, 2):
        opt.step(g)
    return params, opt, checkpoint.to_arrays(opt.state_dict())


def _through_file(arrays, **extra):
    """``arrays`` (plus ``extra``) written by np.savez and read back by from_arrays from the file,
    as load_npz does (np.load: no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays, **extra)
    buf.seek(0)
    with np.load(buf) as f:
        return checkpoint.from_arrays(f)


STEP_KEY = "optim/state/0/step"
GROUPS_KEY = "optim/param_groups.json"

TAMPERED = {
    # what -> (edit of the arrays, words the error must contain)
    "fractional step": (lambda a: a.__setitem__(STEP_KEY, np.array(1.7)), [STEP_KEY, "integer", "1.7"]),
    "negative step": (lambda a: a.__setitem__(STEP_KEY, np.array(-2, np.int64)), [STEP_KEY, "non-negative"]),
    "nan step": (lambda a: a.__setitem__(STEP_KEY, np.array(np.nan)), [STEP_KEY, "integer"]),
    "array step": (lambda a: a.__setitem__(STEP_KEY, np.array([1, 2])), [STEP_KEY, "scalar"]),
    "str step": (lambda a: a.__setitem__(STEP_KEY, np.array("3")), [STEP_KEY, "integer"]),
    "bool step": (lambda a: a.__setitem__(STEP_KEY, np.array(True)), [STEP_KEY, "integer"]),
    "missing param_groups": (lambda a: a.pop(GROUPS_KEY), [GROUPS_KEY, "missing"]),
    "garbled param_groups": (lambda a: a.__setitem__(GROUPS_KEY, np.array('[{"lr": 0.1,')), [GROUPS_KEY, "JSON"]),
    "param_groups not a list": (lambda a: a.__setitem__(GROUPS_KEY, np.array('{"lr": 0.1}')),
                                [GROUPS_KEY, "list of objects"]),
    "param_groups a number": (lambda a: a.__setitem__(GROUPS_KEY, np.array(3.0)), [GROUPS_KEY, "string"]),
    "param_groups an array of strings": (lambda a: a.__setitem__(GROUPS_KEY, np.array(["[]", "[]"])),
                                         [GROUPS_KEY, "string", "(2,)"]),
    "index not an int": (lambda a: a.__setitem__("optim/state/x/step", np.array(1)),
                         ["optim/state/x/step", "optim/state/<index>/<name>"]),
    "negative index": (lambda a: a.__setitem__("optim/state/-1/step", np.array(1)), ["optim/state/-1/step", "index"]),
    "index with a leading zero": (lambda a: a.__setitem__("optim/state/01/step", np.array(1)), ["optim/state/01/step"]),
    "no name": (lambda a: a.__setitem__("optim/state/0", np.array(1)), ["optim/state/0", "<name>"]),
    "empty name": (lambda a: a.__setitem__("optim/state/0/", np.array(1)), ["optim/state/0/", "<name>"]),
    "name with a slash": (lambda a: a.__setitem__("optim/state/0/exp/avg", np.zeros(3)), ["optim/state/0/exp/avg"]),
    "unknown optim key": (lambda a: a.__setitem__("optim/extra", np.zeros(3)), ["optim/extra", "not a checkpoint key"]),
    "string state array": (lambda a: a.__setitem__("optim/state/0/exp_avg", np.array(["a", "b"])),
                           ["optim/state/0/exp_avg", "dtype"]),
    "bytes state array": (lambda a: a.__setitem__("optim/state/0/exp_avg", np.array([b"a"])),
                          ["optim/state/0/exp_avg", "dtype"]),
    "complex state array": (lambda a: a.__setitem__("optim/state/0/exp_avg", np.zeros(3, np.complex64)),
                            ["optim/state/0/exp_avg", "dtype"]),
}


@pytest.mark.parametrize("what", list(TAMPERED))
def test_from_arrays_refuses_a_tampered_file(rng, what):
    _, _, arrays = _saved_arrays(rng)
    edit, words = TAMPERED[what]
    edit(arrays)
    for read in (checkpoint.from_arrays, _through_file):     # a dict, and a real np.load file
        with pytest.raises(ValueError) as info:
            read(dict(arrays))
        for word in words:
            assert word in str(info.value), (what, str(info.value))


@pytest.mark.parametrize("key", ["optim/state/0/exp_avg", GROUPS_KEY])
def test_from_arrays_names_an_object_array(rng, key):
    """An object array: np.load refuses it without allow_pickle (the error must say which key);
    in a dict it is refused as such."""
    _, _, arrays = _saved_arrays(rng)
    arrays[key] = np.array([object(), 1], dtype=object)
    with pytest.raises(ValueError, match="object array") as info:
        checkpoint.from_arrays(arrays)
    assert key in str(info.value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)                  # np.savez pickles object arrays into the file
    buf.seek(0)
    with np.load(buf) as f:
        with pytest.raises(ValueError, match="cannot be read") as info:
            checkpoint.from_arrays(f)
    assert key in str(info.value)


def test_to_arrays_refuses_a_step_it_would_truncate(rng):
    _, opt, _ = _saved_arrays(rng)
    sd = opt.state_dict()
    sd["state"][0]["step"] = 1.7
    with pytest.raises(ValueError, match="optim/state/0/step.*1.7"):
        checkpoint.to_arrays(sd)


def test_from_arrays_accepts_what_to_arrays_writes_and_integral_float_steps(rng):
    """Bit-identical round trip, other arrays of the file ignored, and a step stored as 3.0 (an
    integer, as another writer may store it) read as the int 3."""
    params, opt, arrays = _saved_arrays(rng)
    sd = opt.state_dict()
    back = _through_file(arrays, **{"model/w": np.ones(3), "notes": np.array("x")})
    assert back["param_groups"] == json.loads(json.dumps(sd["param_groups"]))
    assert sorted(back["state"]) == sorted(sd["state"])
    for i, s in sd["state"].items():
        assert sorted(back["state"][i]) == sorted(s)
        for k, v in s.items():
            got = back["state"][i][k]
            if k == "step":
                assert type(got) is int and got == v
            else:
                got, v = np.asarray(got), np.asarray(v)
                assert (got.tobytes(), got.dtype, got.shape) == (v.tobytes(), v.dtype, v.shape), k
    arrays[STEP_KEY] = np.array(3.0)
    assert checkpoint.from_arrays(arrays)["state"][0]["step"] == 3
    assert type(checkpoint.from_arrays(arrays)["state"][0]["step"]) is int
