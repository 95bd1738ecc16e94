"""Newton's method: one step on a quadratic; logistic regression to the regularised optimum
(against scikit-learn's solver where installed), with quadratic convergence."""
import numpy as np
import pytest

from fastgd.train import LogisticRegression, Quadratic, newton_logistic, newton_minimize


def test_quadratic_one_step(rng):
    M = rng.standard_normal((4, 4))
    q = Quadratic(M @ M.T + 4 * np.eye(4), rng.standard_normal(4))
    r = newton_minimize(q, q.grad, q.hess, np.zeros(4), gtol=1e-10)
    assert r.converged and r.iterations == 1
    np.testing.assert_allclose(r.x, q.minimizer(), rtol=1e-12)
    theta = newton_minimize(*(lambda q: (q, q.grad, q.hess))(Quadratic([[2.0]], [6.0], 9.0)), [0.0]).x
    assert theta[0] == pytest.approx(3.0, abs=1e-12)


def _noisy(rng, n=400, d=5):
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ rng.standard_normal(d) + 0.3)))).astype(float)
    return X, y


def test_logistic_converges_quadratically(rng):
    X, y = _noisy(rng)
    model = LogisticRegression(5)
    r = newton_logistic(X, y, l2=0.0, gtol=1e-12, model=model)
    assert r.converged and r.iterations <= 10
    g = r.grad_norm
    # quadratic convergence: in the last steps the gradient norm at least squares (up to a constant)
    assert g[-2] < 1e-3 * g[-3] or g[-2] < 1e-9
    model.loss_grad(X, y)
    assert np.linalg.norm(model.grad) < 1e-10   # theta landed in the model: its gradient is zero


def test_logistic_matches_sklearn(rng):
    sk = pytest.importorskip("sklearn.linear_model")
    X, y = _noisy(rng)
    l2 = 0.01
    # sklearn minimises C * sum(loss) + ||w||^2 / 2, i.e. mean(loss) + ||w||^2 / (2 C n)
    ref = sk.LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=10_000).fit(X, y)
    r = newton_logistic(X, y, l2=l2)
    np.testing.assert_allclose(r.x[:-1], ref.coef_[0], rtol=1e-5, atol=1e-7)
    assert r.x[-1] == pytest.approx(ref.intercept_[0], rel=1e-5, abs=1e-7)


def test_separable_data_stays_finite():
    X = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    r = newton_logistic(X, [0, 0, 1, 1])  # the default small l2 keeps the optimum finite
    assert r.converged and np.all(np.isfinite(r.x))


@pytest.mark.parametrize("call, err", [
    (lambda: newton_logistic(np.zeros((3, 2)), [0, 1]), ValueError),
    (lambda: newton_logistic(np.zeros((3, 2)), [0, 1, 2]), ValueError),
    (lambda: newton_logistic(np.zeros((0, 2)), []), ValueError),
    (lambda: newton_logistic(np.ones((3, 2)), [0, 1, 1], l2=-1), ValueError),
    (lambda: newton_logistic(np.ones((3, 2)), [0, 1, 1], model=LogisticRegression(5)), ValueError),
    (lambda: Quadratic([[1.0, 2.0], [0.0, 1.0]], [1.0, 1.0]), ValueError),
    (lambda: Quadratic([[1.0]], [1.0, 2.0]), ValueError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
