"""Shared by the toolkit tests: finite differences."""
import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x (float64), one coordinate at a time; x restored."""
    g = np.zeros(x.size)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return g.reshape(x.shape)


def assert_grad_close(analytic, numeric, rtol=1e-6, atol=1e-8):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    scale = max(np.abs(numeric).max(), 1e-12)
    err = np.abs(analytic - numeric).max()
    assert err <= atol + rtol * scale, f"max |analytic - numeric| = {err:.3e} (scale {scale:.3e})"
