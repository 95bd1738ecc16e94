"""Newton's method: x <- x - H(x)^-1 grad(x), a Hessian solve per iteration.

Second-order: on a quadratic it lands on the minimiser in one step; near a minimum of a smooth
strictly convex function (logistic regression) the error squares each iteration. The price is
O(d^2) memory and an O(d^3) solve per iteration against gradient descent's O(d) step, which is why
gradient descent wins once d is large (the comparison in ``fastgd demo quadratic``).
"""

import numpy as np

from .data import check_xy
from .loop import descend
from .losses import bce_with_logits, sigmoid

__all__ = ["Quadratic", "newton_minimize", "newton_logistic"]


class Quadratic:
    """f(x) = 1/2 x^T A x - b^T x + c, grad f = A x - b (A symmetric), Hessian A, minimiser A^-1 b.

    ``Quadratic([[2.0]], [6.0], 9.0)`` is (x - 3)^2.
    """

    def __init__(self, A, b, c=0.0):
        A = np.atleast_2d(np.asarray(A, dtype=np.float64))
        b = np.atleast_1d(np.asarray(b, dtype=np.float64))
        if A.shape != (b.size, b.size):
            raise ValueError(f"A must be ({b.size}, {b.size}) for b of length {b.size}; got {A.shape}")
        if not np.allclose(A, A.T):
            raise ValueError("A must be symmetric")
        self.A, self.b, self.c = A, b, float(c)

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return float(0.5 * x @ self.A @ x - self.b @ x + self.c)

    def grad(self, x):
        return self.A @ np.asarray(x, dtype=np.float64).reshape(-1) - self.b

    def hess(self, x=None):
        return self.A

    def minimizer(self):
        return np.linalg.solve(self.A, self.b)


def _solve(H, g):
    try:
        return np.linalg.solve(H, g)
    except np.linalg.LinAlgError:
        # singular Hessian (flat directions): the least-norm step
        return np.linalg.lstsq(H, g, rcond=None)[0]


def newton_minimize(fun, grad, hess, x0, *, max_iter=100, gtol=1e-6):
    """Newton's method x_(k+1) = x_k - H(x_k)^-1 grad(x_k) until ||grad(x)|| <= gtol.

    Returns a :class:`~fastgd.train.MinimizeResult` (``iterations`` = Hessian solves).
    """
    x = np.array(x0, dtype=np.float64).reshape(-1)
    return descend(fun, lambda x: np.asarray(grad(x), dtype=np.float64).reshape(-1), x,
                   lambda x, g: x - _solve(np.atleast_2d(hess(x)), g),
                   max_iter=max_iter, gtol=gtol, method="Newton")


def newton_logistic(X, y, *, l2=1e-4, max_iter=50, gtol=1e-8, model=None):
    """Logistic regression by Newton's method (iteratively reweighted least squares).

    With theta = (w, b), X1 = [X, 1], p = sigma(X1 theta), n samples, R = diag(l2, ..., l2, 0):
    f = mean BCE(X1 theta, y) + l2/2 ||w||^2,  grad = X1^T (p - y) / n + R theta,
    H = X1^T diag(p (1 - p)) X1 / n + R.
    The small default l2 keeps H invertible and theta finite on separable data, where the
    unregularised minimiser is at infinity. ``model`` (a LogisticRegression) receives theta.
    """
    X, y = check_xy(X, y)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.min() < 0 or y.max() > 1:
        raise ValueError("binary targets must lie in [0, 1] (labels 0 and 1)")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0; got {l2}")
    n, d = X.shape
    X1 = np.hstack([X.astype(np.float64), np.ones((n, 1))])
    reg = np.full(d + 1, float(l2))
    reg[-1] = 0.0  # the bias is not penalised

    def fun(t):
        return bce_with_logits(X1 @ t, y)[0] + 0.5 * float(reg @ (t * t))

    def grad(t):
        return X1.T @ (sigmoid(X1 @ t) - y) / n + reg * t

    def hess(t):
        p = sigmoid(X1 @ t)
        return (X1.T * (p * (1 - p))) @ X1 / n + np.diag(reg)

    res = newton_minimize(fun, grad, hess, np.zeros(d + 1), max_iter=max_iter, gtol=gtol)
    res.method = "Newton (logistic)"
    if model is not None:
        if model.params.size != d + 1 or model.loss_name != "bce":
            raise ValueError(f"model must be a LogisticRegression with {d} features")
        model.params[:] = res.x  # layout: W (1, d) then b (1,), the same as theta
    return res
