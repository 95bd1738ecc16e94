"""The vanishing/exploding-gradient study: per-layer gradient norms of a deep MLP at initialisation,
and what happens when it is trained with plain SGD.

Backprop multiplies the upstream gradient by W_l^T and by the activation's derivative at every
layer, so after L layers its size scales like prod_l (sigma_l sqrt(fan) * E|f'|): with weights too
small every factor is < 1 and the gradient reaching the first layers vanishes; too large, and for
tanh (in its chaotic regime) or relu the factors exceed 1 and it explodes towards the input.
Xavier init (tanh) and He init (relu) set sigma = gain / sqrt(fan) so each factor is ~1 and the
norms stay flat. Clipping the global gradient norm (max 1.0) does not fix the init, but it bounds
each step, so a net that diverges (overflow, NaN) with plain SGD keeps training.
"""
import numpy as np

from .data import check_xy
from .loop import fit
from .models import MLP

__all__ = ["make_classification", "layer_gradient_norms", "init_study", "training_study", "STUDY_CASES"]

#: (label, activation, init) of the at-initialisation comparison
STUDY_CASES = (
    ("tanh, std 0.05 (too small)", "tanh", 0.05),
    ("tanh, std 1.0 (too large)", "tanh", 1.0),
    ("tanh, Xavier", "tanh", "xavier"),
    ("relu, std 0.01 (too small)", "relu", 0.01),
    ("relu, std 0.3 (too large)", "relu", 0.3),
    ("relu, He", "relu", "he"),
)


def make_classification(n=512, n_features=32, n_classes=4, seed=0):
    """Synthetic data: X ~ N(0, I), y = argmax(X T) for a random teacher T (learnable, no noise)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features))
    y = (X @ rng.standard_normal((n_features, n_classes))).argmax(axis=1)
    return X, y


def layer_gradient_norms(X, y, *, depth=12, width=64, activation="tanh", init="xavier", seed=1):
    """||dL/dW_l|| for l = 1 (input side) .. depth + 1 (output) of a fresh MLP with ``depth`` hidden
    layers of ``width`` units, on one full batch of (X, y)."""
    X, y = check_xy(X, y)
    n_classes = int(np.max(y)) + 1
    model = MLP([X.shape[1]] + [width] * depth + [max(n_classes, 2)], activation, init=init, seed=seed)
    with np.errstate(over="ignore", invalid="ignore"):
        model.loss_grad(X, y)
    return model.layer_grad_norms()


def init_study(X=None, y=None, *, depth=12, width=64, cases=STUDY_CASES, seed=1):
    """{label: per-layer gradient norms} for each (label, activation, init) in ``cases``."""
    if X is None:
        X, y = make_classification()
    return {label: layer_gradient_norms(X, y, depth=depth, width=width, activation=act, init=init, seed=seed)
            for label, act, init in cases}


def training_study(X=None, y=None, *, depth=12, width=64, epochs=15, batch_size=64, lr=0.05,
                   max_norm=1.0, seed=1, optimizer=None):
    """Train relu MLPs with SGD(lr): too-large init (std 0.3) without and with clipping at
    ``max_norm``, and He init. Returns {label: {"history": History, "accuracy": training accuracy}};
    expect stop_reason "diverged" for the first.

    ``optimizer(params, lr)`` builds the optimizer (default fastgd.SGD, plain gradient descent:
    an adaptive method such as Adam divides the gradient's scale away and would hide the effect).
    """
    if X is None:
        X, y = make_classification()
    if optimizer is None:
        import fastgd
        if not hasattr(fastgd, "SGD"):
            raise RuntimeError("the training study needs fastgd.SGD")
        optimizer = lambda params, lr: fastgd.SGD(params, lr=lr)  # noqa: E731
    n_classes = max(int(np.max(y)) + 1, 2)
    runs = {}
    for label, init, clip in (("relu, std 0.3, no clipping", 0.3, None),
                              (f"relu, std 0.3, clip {max_norm:g}", 0.3, max_norm),
                              ("relu, He, no clipping", "he", None)):
        model = MLP([X.shape[1]] + [width] * depth + [n_classes], "relu", init=init, seed=seed)
        opt = optimizer([model.params], lr)
        with np.errstate(over="ignore", invalid="ignore"):
            hist = fit(model, opt, X, y, epochs=epochs, batch_size=batch_size, clip_grad_norm=clip, seed=seed)
            acc = float("nan") if hist.diverged else model.accuracy(X, y)
        runs[label] = {"history": hist, "accuracy": acc}
    return runs
