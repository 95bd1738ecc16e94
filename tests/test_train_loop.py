"""fit and minimize: the history's indicators, accumulation = one big batch, clipping, schedules,
stopping, the quadratic for every optimizer, digits accuracy, clear errors."""
import numpy as np
import pytest

import fastgd
from fastgd import schedules as S
from fastgd.demo import QUADRATIC_METHODS, run_quadratic, train_digits
from fastgd.train import MLP, LinearRegression, Quadratic, SoftmaxRegression, fit, global_norm, minimize


def _regression(rng, n=64, d=5):
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)


class Recorder:
    """An optimizer that records what fit hands it (gradient norm after grad_scale) and does not move."""

    def __init__(self, params, lr=0.0):
        self.param_groups = [{"params": [params], "lr": lr}]
        self.norms, self.scales = [], []

    def step(self, grads, grad_scale=1.0):
        self.scales.append(grad_scale)
        self.norms.append(grad_scale * global_norm(grads[0]))


def test_history_indicators(rng):
    X, y = _regression(rng)
    model = MLP([5, 8, 1], "tanh", loss="mse", seed=0)
    opt = fastgd.Adam([model.params], lr=0.01)
    h = fit(model, opt, X, y, epochs=6, batch_size=16, val_data=(X[:10], y[:10]), per_step=True)
    assert h.epochs == 6 and h.steps == 24 and h.stop_reason == "max_epochs"
    for name in ("loss", "grad_norm", "param_change", "val_loss", "lr", "time"):
        assert len(getattr(h, name)) == 6, name
    assert h.val_acc == []  # regression: no accuracy
    assert len(h.step_loss) == len(h.step_grad_norm) == len(h.step_param_change) == 24
    assert h.loss[-1] < h.loss[0]
    assert all(c > 0 for c in h.param_change)
    assert "6 epochs" in h.summary()


def test_accumulation_equals_one_big_batch(rng):
    # 70 rows: big batches of 32, 32, 6 against micro-batches of 8 (the last group a single 6)
    X, y = _regression(rng, n=70)
    runs = []
    for batch_size, k in ((32, 1), (8, 4)):
        model = LinearRegression(5)
        opt = fastgd.Adam([model.params], lr=0.05)
        h = fit(model, opt, X, y, epochs=3, batch_size=batch_size, accumulate=k, shuffle=False)
        runs.append((model.params.copy(), h))
    (p1, h1), (p2, h2) = runs
    assert h1.steps == h2.steps == 9
    np.testing.assert_allclose(p2, p1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h2.grad_norm, h1.grad_norm, rtol=1e-10)


def test_float32_model_trains_in_float32(rng):
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    model = MLP([4, 8, 3], "sigmoid", dtype=np.float32, seed=0)
    h = fit(model, fastgd.AdamW([model.params], lr=0.05), X, y, epochs=10, batch_size=8)
    assert model.params.dtype == np.float32 and h.loss[-1] < h.loss[0]


def test_accumulation_scale_is_one_over_k(rng):
    X, y = _regression(rng, n=32)
    model = LinearRegression(5)
    opt = Recorder(model.params)
    fit(model, opt, X, y, epochs=1, batch_size=8, accumulate=4, shuffle=False)
    assert opt.scales == [0.25]


def test_clipping_bounds_the_step_gradient(rng):
    X, y = _regression(rng)
    y = 1000 * y  # big gradients
    model = LinearRegression(5)
    free, clipped = Recorder(model.params), Recorder(model.params)
    fit(model, free, X, y, epochs=1, batch_size=16, shuffle=False)
    h = fit(model, clipped, X, y, epochs=1, batch_size=16, shuffle=False, clip_grad_norm=1.0)
    assert min(free.norms) > 10
    np.testing.assert_allclose(clipped.norms, 1.0, rtol=1e-5)
    assert h.clipped_steps == 4
    np.testing.assert_allclose(h.grad_norm, np.mean(free.norms))  # the indicator is before clipping


def test_schedule_per_epoch_and_per_step(rng):
    X, y = _regression(rng, n=40)
    model = LinearRegression(5)
    opt = fastgd.Adam([model.params], lr=0.1)
    h = fit(model, opt, X, y, epochs=4, batch_size=10, schedule=S.StepLR(opt, step_size=1, gamma=0.5))
    assert h.lr == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    opt = fastgd.Adam([model.params], lr=0.1)
    h = fit(model, opt, X, y, epochs=2, batch_size=10, per_step=True, schedule_unit="step",
            schedule=S.ExponentialLR(opt, gamma=0.9))
    assert h.step_lr == pytest.approx([0.1 * 0.9 ** t for t in range(8)])


def test_stops_on_loss_tolerance(rng):
    X, y = _regression(rng)
    model = LinearRegression(5)
    opt = fastgd.Adam([model.params], lr=0.1)
    h = fit(model, opt, X, y, epochs=2000, tol=1e-9, patience=2)
    assert h.stop_reason == "converged" and h.converged and h.epochs < 2000
    assert abs(h.loss[-1] - h.loss[-2]) < 1e-9


def test_divergence_is_detected(rng):
    X, y = _regression(rng)
    model = LinearRegression(5)

    class Blowup(Recorder):
        def step(self, grads, grad_scale=1.0):
            model.params[:] = 1e300

    with np.errstate(over="ignore", invalid="ignore"):
        h = fit(model, Blowup(model.params), X, y, epochs=5, batch_size=16)
    assert h.diverged and h.epochs == 1 and not np.isfinite(h.loss[-1])


def test_progress_plain_and_rich(rng, capsys):
    X, y = _regression(rng, n=20)
    model = LinearRegression(5)
    opt = fastgd.Adam([model.params], lr=0.1)
    fit(model, opt, X, y, epochs=3, progress="plain")
    out = capsys.readouterr().out
    assert out.count("epoch") == 3 and "loss" in out
    fit(model, opt, X, y, epochs=2, progress=True)  # rich when installed, plain otherwise


def test_callback_can_stop(rng):
    X, y = _regression(rng, n=20)
    model = LinearRegression(5)
    h = fit(model, fastgd.Adam([model.params]), X, y, epochs=10, callback=lambda e, h: e == 3)
    assert h.epochs == 3 and h.stop_reason == "callback"


@pytest.mark.parametrize("label", [m[0] for m in QUADRATIC_METHODS] + ["Newton"])
def test_quadratic_converges_to_3(label):
    r = run_quadratic()[label]
    assert r.converged
    assert abs(float(r.x[0]) - 3.0) <= 1e-6


def test_quadratic_sgd_matches_seed_loop():
    # the seed's loop: theta -= 0.1 * 2 (theta - 3), 100 times, from 0
    theta = 0.0
    for _ in range(100):
        theta -= 0.1 * 2 * (theta - 3)
    x = np.zeros(1)
    q = Quadratic([[2.0]], [6.0], 9.0)
    minimize(q, q.grad, fastgd.SGD([x], lr=0.1), max_iter=100, gtol=0.0)
    assert x[0] == pytest.approx(theta, rel=1e-12)


def test_sgd_momentum_fit_trains(rng):
    X, y = _regression(rng)
    model = LinearRegression(5)
    h = fit(model, fastgd.SGD([model.params], lr=0.05, momentum=0.9), X, y, epochs=30, batch_size=8)
    assert h.loss[-1] < 0.05 * h.loss[0]


def test_rmsprop_fit_trains(rng):
    X, y = _regression(rng)
    model = LinearRegression(5)
    h = fit(model, fastgd.RMSprop([model.params], lr=0.01), X, y, epochs=30, batch_size=8)
    assert h.loss[-1] < 0.05 * h.loss[0]


def test_digits_mlp_accuracy():
    pytest.importorskip("sklearn")
    model, h = train_digits("mlp", epochs=8)
    assert h.val_acc[-1] >= 0.93
    assert h.loss[-1] < h.loss[0]


def test_minimize_adam_on_quadratic_nd(rng):
    A = np.diag([1.0, 4.0, 9.0])
    q = Quadratic(A, [1.0, 2.0, 3.0])
    x = np.zeros(3)
    r = minimize(q, q.grad, fastgd.Adam([x], lr=0.05), max_iter=20_000, gtol=1e-8)
    assert r.converged and np.allclose(x, q.minimizer(), atol=1e-7)
    assert len(r.loss) == r.iterations + 1


@pytest.mark.parametrize("kw, err", [
    ({"epochs": 0}, ValueError),
    ({"accumulate": 0}, ValueError),
    ({"clip_grad_norm": -1.0}, ValueError),
    ({"tol": -1.0}, ValueError),
    ({"schedule_unit": "batch"}, ValueError),
    ({"batch_size": 0}, ValueError),
    ({"val_data": (np.zeros((2, 3)),)}, TypeError),
    ({"val_data": (np.zeros((2, 3)), [0, 9])}, ValueError),   # validation label out of range
    ({"val_data": (np.zeros((2, 4)), [0, 1])}, ValueError),   # validation features != model's
])
def test_bad_fit_options(rng, kw, err):
    model = SoftmaxRegression(3, 2)
    with pytest.raises(err):
        fit(model, fastgd.Adam([model.params]), rng.standard_normal((6, 3)), rng.integers(0, 2, 6), **kw)


def test_bad_data_and_optimizer(rng):
    model = SoftmaxRegression(3, 2)
    opt = fastgd.Adam([model.params])
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    with pytest.raises(ValueError, match="empty"):
        fit(model, opt, np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="samples"):
        fit(model, opt, X, y[:5])
    with pytest.raises(ValueError, match="out of range"):
        fit(model, opt, X, np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(ValueError, match="lr"):
        fastgd.Adam([model.params], lr=-0.1)
    opt.param_groups[0]["lr"] = -0.1  # set behind the optimizer's back
    with pytest.raises(ValueError, match="learning rate"):
        fit(model, opt, X, y)
    with pytest.raises(ValueError, match="model.params"):
        fit(model, fastgd.Adam([np.zeros(3)]), X, y)
    other = fastgd.Adam([model.params])
    with pytest.raises(ValueError, match="same optimizer"):
        fit(model, fastgd.Adam([model.params]), X, y, schedule=S.StepLR(other, step_size=1))
    with pytest.raises(TypeError):
        fit(model, object(), X, y)


def test_global_norm_is_the_kernel_norm_of_any_array_likes():
    import math

    from fastgd import functional as F
    a32, a64 = np.arange(5, dtype=np.float32), np.linspace(-1, 1, 7)
    assert global_norm() == 0.0
    assert global_norm(a64) == F.global_norm([a64])
    assert global_norm(a32, a32[::-1]) == F.global_norm([a32, a32[::-1].copy()])
    # other dtypes, and float32 with float64, go through float64: the same value
    assert global_norm(np.arange(5)) == math.sqrt(30)
    assert global_norm(a32, a64) == F.global_norm([a32.astype(np.float64), a64])
    assert global_norm([[3.0, 4.0]]) == 5.0
    assert math.isnan(global_norm(np.array([np.nan, 1.0])))
