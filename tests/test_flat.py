"""FlatParams: one contiguous buffer, per-tensor views, one kernel call per step."""
import copy
import pickle

import numpy as np
import pytest

import fastgd
from fastgd import functional as F

from _helpers import DTYPES

SHAPES = [(3, 4), (0,), (7,), (), (2, 3, 5), (1000,)]


def _arrays(rng, dtype, shapes=SHAPES):
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_views_share_memory_with_the_buffers(rng, dtype):
    arrays = _arrays(rng, dtype)
    flat = fastgd.FlatParams(arrays)
    assert flat.data.shape == flat.grad.shape == (sum(a.size for a in arrays),)
    assert flat.dtype == dtype and len(flat) == len(SHAPES) and flat.shapes == tuple(SHAPES)
    for a, p, g in zip(arrays, flat.params, flat.grads):
        assert p.shape == a.shape and g.shape == a.shape
        np.testing.assert_array_equal(p, a)
        assert not np.shares_memory(p, a)            # the values were copied in
        if a.size:
            assert np.shares_memory(p, flat.data) and np.shares_memory(g, flat.grad)
    flat.params[0][1, 2] = 42.0
    assert flat.data[6] == 42.0
    flat.grad[:] = 1.0
    assert all(np.all(g == 1.0) for g in flat.grads)
    flat.zero_grad()
    assert not flat.grad.any()
    state = np.arange(flat.size, dtype=dtype)
    assert [v.shape for v in flat.views(state)] == list(map(tuple, SHAPES))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls,kw", [(fastgd.Adam, {}), (fastgd.AdamW, dict(amsgrad=True))],
                         ids=["adam", "adamw-amsgrad"])
def test_flat_step_equals_per_tensor_step(backend, rng, dtype, cls, kw):
    arrays = _arrays(rng, dtype)
    separate = [a.copy() for a in arrays]
    flat = fastgd.FlatParams(arrays)
    opt_flat = cls(flat, lr=1e-2, **kw)
    opt_sep = cls(separate, lr=1e-2, **kw)
    assert len(opt_flat.param_groups[0]["params"]) == 1     # one kernel call per step
    for _ in range(5):
        grads = _arrays(rng, dtype)
        for view, g in zip(flat.grads, grads):
            view[...] = g
        opt_flat.step()
        opt_sep.step(grads)
    # Elementwise, so the same maths; not always the same bits: an element can fall in the
    # compiled loop's vector body in one layout and in its scalar remainder in the other.
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for a, b in zip(flat.params, separate):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    (state,) = opt_flat.state.values()
    assert state["exp_avg"].shape == (flat.size,)
    for view, s in zip(flat.views(state["exp_avg"]), opt_sep.state.values()):
        np.testing.assert_allclose(view.reshape(-1), s["exp_avg"], rtol=tol, atol=tol)


def test_flat_with_clipping_and_multisteps(backend, rng):
    arrays = _arrays(rng, np.float64)
    separate = [a.copy() for a in arrays]
    flat = fastgd.FlatParams(arrays)
    multi = fastgd.MultiSteps(fastgd.Adam(flat, lr=1e-2, max_grad_norm=1.0), 2)
    opt_sep = fastgd.Adam(separate, lr=1e-2, max_grad_norm=1.0)
    for _ in range(3):
        g1, g2 = _arrays(rng, np.float64), _arrays(rng, np.float64)
        for grads in (g1, g2):
            for view, g in zip(flat.grads, grads):
                view[...] = g
            multi.step()
        opt_sep.step([np.asarray((a + b) / 2) for a, b in zip(g1, g2)])
        assert multi.optimizer.last_grad_norm == pytest.approx(opt_sep.last_grad_norm, rel=1e-13)
    for a, b in zip(flat.params, separate):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_state_dict_and_pickle_round_trips(backend, rng, dtype):
    flat = fastgd.FlatParams(_arrays(rng, dtype))
    opt = fastgd.Adam(flat, lr=1e-2)
    grads = [rng.standard_normal(flat.size).astype(dtype) for _ in range(6)]
    for g in grads[:3]:
        opt.step([g])
    saved_opt = pickle.loads(pickle.dumps(opt.state_dict()))
    saved_flat = pickle.loads(pickle.dumps(flat))
    for g in grads[3:]:
        opt.step([g])
    # The unpickled FlatParams still has views into its own buffers.
    assert all(np.shares_memory(p, saved_flat.data) for p in saved_flat.params if p.size)
    assert all(np.shares_memory(g, saved_flat.grad) for g in saved_flat.grads if g.size)
    opt2 = fastgd.Adam(saved_flat, lr=5.0)
    opt2.load_state_dict(saved_opt)
    for g in grads[3:]:
        saved_flat.grad[:] = g
        opt2.step()
    np.testing.assert_array_equal(saved_flat.data, flat.data)
    clone = copy.deepcopy(flat)
    clone.params[2][0] = -1.0
    assert clone.data[12] == -1.0 and flat.data[12] != -1.0


def test_param_groups_of_several_flats(rng):
    a, b = fastgd.FlatParams(_arrays(rng, np.float32)), fastgd.FlatParams([np.ones(5, np.float32)])
    opt = fastgd.Adam([{"params": a, "lr": 0.1}, {"params": [b], "lr": 0.0}])
    a.grad[:] = 1.0
    b.grad[:] = 1.0
    before = a.data.copy()
    opt.step()
    assert np.all(a.data[before != 0] != before[before != 0]) and np.all(b.data == 1.0)


def test_flat_global_norm_equals_list_norm(backend, rng):
    arrays = _arrays(rng, np.float32)
    flat = fastgd.FlatParams(arrays)
    flat.grad[:] = rng.standard_normal(flat.size)
    assert F.global_norm([flat.grad]) == pytest.approx(F.global_norm(flat.grads), rel=1e-14)


def test_bad_inputs(rng):
    with pytest.raises(TypeError, match="dtype"):
        fastgd.FlatParams([np.zeros(3, np.float32), np.zeros(3)])
    assert fastgd.FlatParams([np.zeros(3, np.float32), np.zeros(3)], dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="at least one"):
        fastgd.FlatParams([])
    with pytest.raises(TypeError, match="list"):
        fastgd.FlatParams(np.zeros(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        fastgd.FlatParams([np.zeros(3, np.int64)])
    flat = fastgd.FlatParams.zeros([(2, 2), 3])
    assert flat.size == 7 and flat.dtype == np.float32
    with pytest.raises(ValueError, match="7 elements"):
        flat.views(np.zeros(6))
    with pytest.raises(TypeError, match="needs grads"):
        fastgd.Adam([np.zeros(3)]).step()
    with pytest.raises(TypeError, match="needs grads"):
        fastgd.Adam([flat, np.zeros(3, np.float32)]).step()
