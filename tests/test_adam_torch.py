"""Adam/AdamW trajectories against torch.optim over 300 steps (the second oracle)."""
import itertools

import numpy as np
import pytest

import fastgd

torch = pytest.importorskip("torch", reason="torch not installed (pip install fastgd[torch])")

# After 300 steps the float32 trajectories differ by rounding only; float64 by ~1e-13.
TORCH_RTOL = {np.float32: 1e-5, np.float64: 1e-12}
TORCH_ATOL = {np.float32: 1e-6, np.float64: 1e-13}

CONFIGS = [
    dict(weight_decay=wd, amsgrad=ams, maximize=mx)
    for wd, ams, mx in itertools.product((0.0, 0.1), (False, True), (False, True))
]


def _trajectories(cls_name, dtype, config, rng, steps=300, shapes=((1023,), (7, 3), (1,))):
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, cls_name)(tparams, lr=1e-2, betas=(0.85, 0.98), eps=1e-7,
                                          foreach=False, **config)
    opt = getattr(fastgd, cls_name)(params, lr=1e-2, betas=(0.85, 0.98), eps=1e-7, **config)
    for gs in grads:
        for tp, g in zip(tparams, gs):
            tp.grad = torch.from_numpy(g)
        topt.step()
        opt.step(gs)
    return params, [tp.detach().numpy() for tp in tparams], opt, topt


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls_name", ("Adam", "AdamW"))
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_torch_over_300_steps(backend, cls_name, dtype, config, rng):
    mine, theirs, opt, topt = _trajectories(cls_name, dtype, config, rng)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        np.testing.assert_allclose(a, b, rtol=TORCH_RTOL[dtype], atol=TORCH_ATOL[dtype],
                                   err_msg=f"{cls_name} {config} params[{i}] on {backend}")
    for i, tp in enumerate(topt.param_groups[0]["params"]):
        tstate = topt.state[tp]
        for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if config["amsgrad"] else ()):
            np.testing.assert_allclose(opt.state[i][name], tstate[name].numpy().reshape(-1),
                                       rtol=TORCH_RTOL[dtype] * 10, atol=TORCH_ATOL[dtype],
                                       err_msg=f"{name} of params[{i}]")
        assert opt.state[i]["step"] == int(tstate["step"])


def test_adam_decoupled_flag_equals_adamw(backend, rng):
    a = [rng.standard_normal(100).astype(np.float64)]
    b = [a[0].copy()]
    o1 = fastgd.Adam(a, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    o2 = fastgd.AdamW(b, lr=1e-2, weight_decay=0.1)
    for _ in range(20):
        g = rng.standard_normal(100)
        o1.step([g])
        o2.step([g])
    np.testing.assert_array_equal(a[0], b[0])
