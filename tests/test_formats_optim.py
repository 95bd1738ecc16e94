"""Storage formats through the optimizers (both front ends, both compiled backends): bfloat16 and
float16 params, state_dtype, master weights, stochastic rounding, many tensors in one call,
checkpoints, bad combinations. The kernels against the reference are in tests/test_many.py."""
import copy

import numpy as np
import pytest

import fastgd
from fastgd import formats as F
from fastgd.rules import RULES

from _helpers import COMPILED, require_backend

torch = pytest.importorskip("torch", reason="the torch front end needs torch (CI installs it)")
import fastgd.torch as ft  # noqa: E402

BF16, F16 = F.bfloat16, np.dtype(np.float16)


@pytest.fixture(params=COMPILED)
def backend(request):
    require_backend(request.param)
    with fastgd.use_backend(request.param):
        yield request.param


def _randn(rng, n, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(n) * scale).astype(np.float32).astype(dtype)


def _bits(a):
    a = a.detach() if isinstance(a, torch.Tensor) else a
    if isinstance(a, torch.Tensor):
        return a.view(torch.int16).numpy().copy() if a.element_size() == 2 else a.numpy().copy()
    return a.view(np.uint16).copy() if a.itemsize == 2 else a.copy()


# --- torch: the same trajectory as torch's fused 16-bit kernels ----------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls,kw", [("AdamW", {"weight_decay": 0.05}), ("Adam", {"weight_decay": 0.01}),
                                    ("Adam", {"amsgrad": True}), ("AdamW", {"maximize": True})],
                         ids=["adamw", "adam-wd", "amsgrad", "maximize"])
def test_16bit_adam_follows_torch_fused_over_many_steps(backend, dtype, cls, kw):
    # torch's fused CPU Adam computes in float32 and rounds to nearest even on store, as fastgd
    # does: over 200 steps of several odd-length tensors the params stay (nearly) bitwise equal.
    gen = torch.Generator().manual_seed(1)
    shapes = [(7,), (33, 31), (1023,), (5, 3, 3)]
    mine = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in mine]
    o1 = getattr(ft, cls)(mine, lr=3e-3, **kw)
    o2 = getattr(torch.optim, cls)(ref, lr=3e-3, fused=True, **kw)
    for _ in range(200):
        for a, b in zip(mine, ref):
            g = torch.randn(a.shape, generator=gen).to(dtype)
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(mine, ref):
        differ = (a != b).float().mean().item()
        # an FMA contracted differently can flip a rounding now and then; it must stay rare
        assert differ <= 0.01, (backend, cls, dtype, differ)
        torch.testing.assert_close(a.float(), b.float(), rtol=0.02, atol=0.02)
        for name in ("exp_avg", "exp_avg_sq"):
            assert o1.state[a][name].dtype == dtype
            torch.testing.assert_close(o1.state[a][name].float(), o2.state[b][name].float(),
                                       rtol=0.05, atol=1e-3)


def test_torch_16bit_checkpoints_interchange_with_torch(backend):
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(1001, generator=gen).to(torch.bfloat16).requires_grad_()
    q = p.detach().clone().requires_grad_()
    # fused=True in fastgd too (accepted, ignored): a loaded param group carries it to torch
    o1, o2 = ft.AdamW([p], lr=1e-2, fused=True), torch.optim.AdamW([q], lr=1e-2, fused=True)
    for _ in range(5):
        g = torch.randn(1001, generator=gen).to(torch.bfloat16)
        p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    # torch -> fastgd and fastgd -> torch: the next steps agree as before
    o3 = ft.AdamW([p], lr=1e-2, fused=True)
    o3.load_state_dict(copy.deepcopy(o2.state_dict()))
    o4 = torch.optim.AdamW([q], lr=1e-2, fused=True)
    o4.load_state_dict(copy.deepcopy(o1.state_dict()))
    for _ in range(5):
        g = torch.randn(1001, generator=gen).to(torch.bfloat16)
        p.grad, q.grad = g.clone(), g.clone()
        o3.step()
        o4.step()
    assert (p != q).float().mean().item() <= 0.01


# --- master weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("half", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtype", [None, "bfloat16"], ids=["f32-states", "bf16-states"])
def test_master_weights_are_a_float32_run_and_the_param_its_rounding(backend, rng, half, state_dtype):
    # With master weights the update is applied to a float32 copy: it is the float32 run fed the
    # same (16-bit) gradients, and the 16-bit param is that copy rounded to nearest.
    n = 4099
    p32 = _randn(rng, n)
    p16 = p32.astype(half)
    ref = p16.astype(np.float32)
    mine = fastgd.AdamW([p16], lr=1e-2, weight_decay=0.1, master_weights=True, state_dtype=state_dtype)
    twin = fastgd.AdamW([ref], lr=1e-2, weight_decay=0.1, state_dtype=state_dtype or "float32")
    for _ in range(50):
        g = _randn(rng, n, half)
        mine.step([g])
        twin.step([g.astype(np.float32)])
    master = mine.state[0]["master_weight"]
    assert master.dtype == np.float32
    # the lanes' FMAs may round differently from the single float32 kernel's
    np.testing.assert_allclose(master, ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(_bits(p16), _bits(master.astype(half)))


def test_master_weights_in_torch_and_checkpoint_bit_identical(backend):
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(3001, generator=gen).to(torch.bfloat16).requires_grad_()
    opt = ft.AdamW([p], lr=1e-2, master_weights=True)
    for _ in range(3):
        p.grad = torch.randn(3001, generator=gen).to(torch.bfloat16)
        opt.step()
    assert opt.state[p]["master_weight"].dtype == torch.float32
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    saved = copy.deepcopy(opt.state_dict())
    q = p.detach().clone().requires_grad_()
    other = ft.AdamW([q], lr=1e-2, master_weights=True)
    other.load_state_dict(saved)
    assert torch.equal(other.state[q]["master_weight"], opt.state[p]["master_weight"])
    for _ in range(3):
        g = torch.randn(3001, generator=gen).to(torch.bfloat16)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        other.step()
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["master_weight"], other.state[q]["master_weight"])


# --- stochastic rounding ------------------------------------------------------------------------

def test_stochastic_rounding_is_reproducible_seeded_and_thread_count_independent(backend, rng):
    n = 70_001          # above the parallel threshold: two threads split it
    p0 = _randn(rng, n, BF16)
    grads = [_randn(rng, n, BF16) for _ in range(4)]

    def run(seed, threads):
        p = p0.copy()
        opt = fastgd.AdamW([p], lr=1e-3, bf16_stochastic_round=True, stochastic_round_seed=seed)
        with fastgd.backends.use_num_threads(threads):
            for g in grads:
                opt.step([g])
        return _bits(p)

    a = run(0, 1)
    np.testing.assert_array_equal(a, run(0, 2))
    np.testing.assert_array_equal(a, run(0, 1))
    assert (a != run(1, 1)).mean() > 0.1


def test_nearest_rounding_stalls_where_master_weights_and_stochastic_rounding_do_not(backend, rng):
    # Steps far below half an ulp of the params: bf16 params rounded to nearest never move;
    # master weights and stochastic rounding follow the float32 run.
    n = 2048
    start = (1.0 + rng.random(n)).astype(np.float32).astype(BF16).astype(np.float32)
    target = start + 0.25          # params in [1, 2.25): ulp 2**-7 or 2**-6

    def train(dtype, **kw):
        # f(p) = |p - target|^2; lr * grad starts at 5e-4, below half an ulp
        p = start.astype(dtype)
        opt = fastgd.SGD([p], lr=1e-3, **kw)
        for _ in range(3000):
            g = (2 * (p.astype(np.float32) - target)).astype(dtype)
            opt.step([g])
        return np.mean((p.astype(np.float32) - target) ** 2)

    exact = train(np.float32)
    assert exact < 0.01 * 0.25 ** 2
    assert train(BF16) == pytest.approx(0.25 ** 2, rel=0.05)          # stalled
    assert train(BF16, master_weights=True) < 1e-4       # the 16-bit param: ulp-sized error
    assert train(BF16, bf16_stochastic_round=True) < 1e-4


# --- 16-bit states train as well as float32 -----------------------------------------------------

def test_16bit_states_reach_the_float32_loss_on_the_digits(backend):
    # bfloat16 moments rounded to nearest lose Adam's small updates (v changes by 0.1% a step,
    # half an ulp is 0.4%): their loss is ~4% worse here. Rounded stochastically they train as
    # float32 does. float16 has the precision but not the range: v = g^2 underflows below
    # g ~ 2e-4, so it needs a larger eps (compared with float32 at the same eps).
    pytest.importorskip("sklearn", reason="the digits need scikit-learn (CI installs it)")
    from _train_helpers import digits_final_losses as final

    base = final()
    sr = final(state_dtype="bfloat16", bf16_stochastic_round=True)
    for mine, ref in zip(sr, base):
        assert abs(mine - ref) <= 0.01 * ref, (sr, base)
    nearest = final(state_dtype="bfloat16")
    assert nearest[1] < 1.1 * base[1]                 # worse, but it trains
    half, ref16 = final(state_dtype="float16", eps=1e-4), final(eps=1e-4)
    assert abs(half[1] - ref16[1]) <= 0.05 * ref16[1], (half, ref16)


def test_16bit_torch_model_reaches_the_float32_loss(backend):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(512, 16, generator=gen)
    w = torch.randn(16, 1, generator=gen)
    y = torch.tanh(X @ w) + 0.05 * torch.randn(512, 1, generator=gen)

    def train(**kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = ft.AdamW(model.parameters(), lr=1e-2, **kw)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(X), y)
            loss.backward()
            opt.step()
        return torch.nn.functional.mse_loss(model(X), y).item()

    base = train()
    bf16 = train(state_dtype=torch.bfloat16, bf16_stochastic_round=True)
    assert abs(bf16 - base) <= 0.01 * base + 1e-4, (bf16, base)
    f16, ref = train(state_dtype=torch.float16, eps=1e-4), train(eps=1e-4)
    assert abs(f16 - ref) <= 0.05 * ref + 1e-4, (f16, ref)


# --- many tensors in one call -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(n for n in RULES if "max_grad_norm" not in RULES[n].options))
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
def test_a_group_in_one_call_equals_each_array_alone(backend, rng, name, dtype):
    # A group of many arrays is one many-kernel call; each array alone is its own call. The
    # results are bitwise the same (elementwise rules), whatever the split among threads.
    rule = RULES[name]
    sizes = [1, 7, 1023, 40_001, 5]
    params = [_randn(rng, n, dtype) for n in sizes]
    alone = [p.copy() for p in params]
    cls = getattr(fastgd, rule.optimizer)
    together = cls([p for p in params], **rule.options)
    singles = [cls([p], **rule.options) for p in alone]
    for _ in range(3):
        grads = [_randn(rng, n, dtype) for n in sizes]
        together.step(grads)
        for opt, g in zip(singles, grads):
            opt.step([g])
    for a, b in zip(params, alone):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_torch_many_small_tensors_follow_torch_fused(backend):
    gen = torch.Generator().manual_seed(4)
    mine = [torch.randn(1000, generator=gen, requires_grad=True) for _ in range(150)]
    ref = [p.detach().clone().requires_grad_() for p in mine]
    o1, o2 = ft.AdamW(mine, lr=1e-2), torch.optim.AdamW(ref, lr=1e-2, fused=True)
    for _ in range(10):
        for a, b in zip(mine, ref):
            g = torch.randn(1000, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- checkpoints and bad input ------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"state_dtype": "float32"}, {"master_weights": True},
                                {"bf16_stochastic_round": True}],
                         ids=["bf16", "f32-states", "master", "sr"])
def test_numpy_16bit_checkpoint_round_trips_bit_identically(backend, rng, kw):
    n = 3001
    p = _randn(rng, n, BF16)
    opt = fastgd.Adam([p], lr=1e-2, amsgrad=True, **kw)
    for _ in range(3):
        opt.step([_randn(rng, n, BF16)])
    saved = opt.state_dict()
    q = p.copy()
    other = fastgd.Adam([q], lr=1e-2, amsgrad=True, **kw)
    other.load_state_dict(copy.deepcopy(saved))
    for k, v in saved["state"][0].items():
        if isinstance(v, np.ndarray):
            assert other.state[0][k].dtype == v.dtype
            np.testing.assert_array_equal(_bits(other.state[0][k]), _bits(v))
    for _ in range(3):
        g = _randn(rng, n, BF16)
        opt.step([g])
        other.step([g.copy()])
    np.testing.assert_array_equal(_bits(p), _bits(q))


def _fingerprint(*arrays):
    return [_bits(a).tobytes() for a in arrays]


def test_unsupported_combinations_are_type_errors_that_write_nothing(rng):
    p64 = rng.standard_normal(9)
    before = _fingerprint(p64)
    with pytest.raises(TypeError, match="not a supported combination.*Supported"):
        fastgd.Adam([p64], state_dtype="bfloat16").step([rng.standard_normal(9)])
    assert _fingerprint(p64) == before
    p32 = _randn(rng, 9)
    with pytest.raises(TypeError, match="not a supported combination"):
        fastgd.Adam([p32], state_dtype=np.float64).step([_randn(rng, 9)])
    with pytest.raises(TypeError, match="state_dtype"):
        fastgd.Adam([p32], state_dtype="int8")
    with pytest.raises(TypeError, match="master_weights"):
        fastgd.Adam([p32], master_weights="yes")
    # a bf16 gradient for a float32 param: named, nothing written
    p = _randn(rng, 9)
    opt = fastgd.Adam([p])
    before = _fingerprint(p)
    with pytest.raises(TypeError, match="grads\\[0\\]"):
        opt.step([_randn(rng, 9, BF16)])
    assert _fingerprint(p) == before and not opt.state


def test_a_state_in_another_format_than_state_dtype_is_refused_on_load(rng):
    p = _randn(rng, 11, BF16)
    opt = fastgd.Adam([p], state_dtype="float32")
    opt.step([_randn(rng, 11, BF16)])
    saved = opt.state_dict()
    bad = copy.deepcopy(saved)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"].astype(BF16)
    before = _fingerprint(p, opt.state[0]["exp_avg"])
    with pytest.raises(ValueError, match="exp_avg.*kept in float32"):
        opt.load_state_dict(bad)
    assert _fingerprint(p, opt.state[0]["exp_avg"]) == before
    missing = copy.deepcopy(saved)
    other = fastgd.Adam([p.copy()], master_weights=True)
    with pytest.raises(ValueError, match="master_weight"):
        other.load_state_dict(missing)


def test_multisteps_sums_16bit_micro_batches_in_float32_and_rounds_once(backend, rng):
    from fastgd.multistep import MultiSteps
    n = 999
    p = _randn(rng, n, BF16)
    q = p.copy()
    ms = MultiSteps(fastgd.AdamW([p], lr=1e-2), 3)
    direct = fastgd.AdamW([q], lr=1e-2)
    for _ in range(2):
        grads = [_randn(rng, n, BF16) for _ in range(3)]
        for g in grads:
            ms.step([g])
        f = [g.astype(np.float32) for g in grads]
        total = (f[0] + f[1]) + f[2]          # the order MultiSteps adds them in
        direct.step([total.astype(BF16)], grad_scale=1 / 3)
    np.testing.assert_array_equal(_bits(p), _bits(q))
