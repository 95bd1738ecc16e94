"""Shared by the toolkit and storage-format tests: finite differences, the digits task."""
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


def digits_final_losses(**optimizer_options):
    """(train loss, validation loss) after 25 epochs of fastgd.AdamW (lr 3e-3) with
    ``optimizer_options`` on the digits MLP [64, 64, 10] (the storage-format tests' task)."""
    import numpy as np
    import fastgd
    from fastgd.demo import load_digits_split
    from fastgd.train import fit
    from fastgd.train.models import MLP
    Xtr, Xte, ytr, yte = load_digits_split(0)
    model = MLP([64, 64, 10], seed=0, dtype=np.float32)
    hist = fit(model, fastgd.AdamW([model.params], lr=3e-3, **optimizer_options), Xtr, ytr,
               epochs=25, batch_size=32, seed=0, val_data=(Xte, yte))
    return hist.loss[-1], hist.val_loss[-1]
