"""Small models with hand-written backprop, every parameter a view into one flat buffer.

``model.params`` is one contiguous 1-D array holding every weight and bias, ``model.grad`` its
gradient (same layout), so an optimizer steps the whole model in one kernel call::

    opt = fastgd.Adam([model.params], lr=1e-3)
    loss = model.loss_grad(X, y)      # forward + backward, fills model.grad
    opt.step([model.grad])

``model.weights[l]`` / ``model.biases[l]`` (and ``model.grad_weights`` / ``grad_biases``) are
views into those buffers: writing to a view writes the model.

A dense layer is z = x W^T + b with W of shape (out, in), torch.nn.Linear's layout, so the init
functions compute the same fans as torch. Backprop through it, for a batch X (rows = samples)
and upstream gradient dZ = dL/dz:  dW = dZ^T X,  db = sum over rows of dZ,  dX = dZ W.
Activations: relu' = [z > 0];  tanh' = 1 - tanh(z)^2;  sigmoid' = s (1 - s).
"""
import numbers

import numpy as np

from . import init as _init
from . import losses as _losses
from .data import check_xy

__all__ = ["Model", "MLP", "LinearRegression", "LogisticRegression", "SoftmaxRegression"]

_ACTIVATIONS = ("relu", "tanh", "sigmoid")
_LOSSES = ("cross_entropy", "bce", "mse")


def _act(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "tanh":
        return np.tanh(z)
    return _losses.sigmoid(z)


def _act_grad(name, z, a, upstream):
    # derivative expressed through the activation a = f(z) where that is cheaper
    if name == "relu":
        return upstream * (z > 0)
    if name == "tanh":
        return upstream * (1.0 - a * a)
    return upstream * (a * (1.0 - a))


class Model:
    """Base: a dense network sizes[0] -> ... -> sizes[-1] with one loss (see module docstring)."""

    loss_name = "mse"

    def __init__(self, sizes, *, activation="relu", loss="mse", init="auto", seed=0, dtype=np.float64):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output size; got {sizes}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
                raise ValueError(f"layer sizes must be ints >= 1; got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}; got {activation!r}")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}; got {loss!r}")
        if loss == "bce" and sizes[-1] != 1:
            raise ValueError("loss='bce' (binary) needs one output unit")
        if loss == "cross_entropy" and sizes[-1] < 2:
            raise ValueError("loss='cross_entropy' needs at least 2 output units (classes)")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"dtype must be float32 or float64; got {self.dtype}")
        self.sizes = [int(s) for s in sizes]
        self.activation = activation
        self.loss_name = loss
        shapes = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            shapes += [(fan_out, fan_in), (fan_out,)]
        total = sum(int(np.prod(s)) for s in shapes)
        # One allocation for all parameters and one for all gradients: the optimizer's state then
        # is one array per moment too, and a step is a single fused pass.
        self.params = np.zeros(total, self.dtype)
        self.grad = np.zeros(total, self.dtype)
        views, gviews, offset = [], [], 0
        for s in shapes:
            size = int(np.prod(s))
            views.append(self.params[offset:offset + size].reshape(s))
            gviews.append(self.grad[offset:offset + size].reshape(s))
            offset += size
        self.weights, self.biases = views[0::2], views[1::2]
        self.grad_weights, self.grad_biases = gviews[0::2], gviews[1::2]
        self.init(init, seed)

    # --- initialisation ---------------------------------------------------------------------

    def init(self, scheme="auto", seed=0):
        """(Re)initialise: biases 0; weights by ``scheme``:

        "auto": He-normal (gain sqrt 2) for relu, Xavier-normal (gain of the activation) for
        tanh/sigmoid; "he" / "xavier": that rule (normal); "zeros"; a float s: N(0, s^2) for every
        weight whatever its fan (the too-small / too-large init of the gradient study).
        """
        rng = _init.as_generator(seed)
        self.params[:] = 0
        if isinstance(scheme, numbers.Real) and not isinstance(scheme, bool):
            for W in self.weights:
                _init.normal_(W, float(scheme), seed=rng)
            return self
        if scheme == "zeros":
            return self
        if scheme == "auto":
            scheme = "he" if self.activation == "relu" else "xavier"
        gain_name = "relu" if self.activation == "relu" else self.activation
        for i, W in enumerate(self.weights):
            last = i == len(self.weights) - 1
            if scheme == "he":
                # the output layer feeds the loss, not an activation: linear gain
                _init.kaiming_normal_(W, nonlinearity="linear" if last else "relu", seed=rng)
            elif scheme == "xavier":
                _init.xavier_normal_(W, gain=1.0 if last else _init.calculate_gain(gain_name), seed=rng)
            else:
                raise ValueError(f"init must be 'auto', 'he', 'xavier', 'zeros' or a float std; got {scheme!r}")
        return self

    # --- forward / backward -----------------------------------------------------------------

    def _input(self, X):
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (samples, {self.sizes[0]}); got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X is empty (0 samples)")
        return X.astype(self.dtype, copy=False)

    def _forward(self, X, keep):
        """Output of the last layer (logits or predictions); ``keep`` collects (z, a) for backprop."""
        a = X
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            z = a @ W.T
            z += b
            a = z if i == last else _act(self.activation, z)
            if keep is not None:
                keep.append((z, a))
        return a

    def forward(self, X):
        """The raw output: logits for classifiers, predictions for regression; shape (samples, out)."""
        return self._forward(self._input(X), None)

    def _targets(self, y, n):
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0] if y.ndim else 'a scalar'}")
        if self.loss_name == "cross_entropy":
            return _losses.check_labels(y, self.sizes[-1], n)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"targets must be numeric; got dtype {y.dtype}")
        y = y.astype(self.dtype, copy=False)
        if y.ndim == 1:
            if self.sizes[-1] != 1:
                raise ValueError(f"y must have shape ({n}, {self.sizes[-1]}); got {y.shape}")
            y = y[:, None]
        if y.shape[1:] != (self.sizes[-1],):
            raise ValueError(f"y must have shape ({n}, {self.sizes[-1]}); got {y.shape}")
        if self.loss_name == "bce" and y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError("binary targets must lie in [0, 1] (labels 0 and 1)")
        return y

    def _loss(self, out, y):
        if self.loss_name == "cross_entropy":
            return _losses.softmax_cross_entropy(out, y)
        if self.loss_name == "bce":
            return _losses.bce_with_logits(out, y)
        return _losses.mse(out, y)

    def loss(self, X, y):
        """The mean loss over the batch, without gradients."""
        X = self._input(X)
        return self._loss(self._forward(X, None), self._targets(y, X.shape[0]))[0]

    def loss_grad(self, X, y):
        """The mean loss over the batch; writes dL/dparams into ``self.grad`` (overwriting it)."""
        X = self._input(X)
        y = self._targets(y, X.shape[0])
        keep = []
        out = self._forward(X, keep)
        loss, dz = self._loss(out, y)
        dz = dz.astype(self.dtype, copy=False)
        for i in range(len(self.weights) - 1, -1, -1):
            a_in = X if i == 0 else keep[i - 1][1]
            np.matmul(dz.T, a_in, out=self.grad_weights[i])
            dz.sum(axis=0, out=self.grad_biases[i])
            if i:
                z_prev, a_prev = keep[i - 1]
                dz = _act_grad(self.activation, z_prev, a_prev, dz @ self.weights[i])
        return loss

    # --- predictions ------------------------------------------------------------------------

    @property
    def is_classifier(self):
        return self.loss_name in ("cross_entropy", "bce")

    def predict(self, X):
        """Class labels for classifiers (argmax; logit > 0 for binary), predictions for regression
        (1-D when there is one output)."""
        out = self.forward(X)
        if self.loss_name == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss_name == "bce":
            return (out[:, 0] > 0).astype(np.int64)
        return out[:, 0] if self.sizes[-1] == 1 else out

    def accuracy(self, X, y):
        """Fraction of correctly classified samples (classifiers only)."""
        if not self.is_classifier:
            raise TypeError(f"accuracy needs a classifier; this model's loss is {self.loss_name!r}")
        X, y = check_xy(X, y)
        y = self._targets(y, X.shape[0])
        pred = self.predict(X)
        return float(np.mean(pred == (y if y.ndim == 1 else y[:, 0])))

    def layer_grad_norms(self):
        """||dL/dW_l|| for each layer l (first to last), from the last ``loss_grad``."""
        return [float(np.linalg.norm(g)) for g in self.grad_weights]

    def __repr__(self):
        return (f"{type(self).__name__}(sizes={self.sizes}, activation={self.activation!r}, "
                f"loss={self.loss_name!r}, params={self.params.size}, dtype={self.dtype})")


class MLP(Model):
    """A multilayer perceptron: hidden layers a = act(a W^T + b) (relu/tanh/sigmoid), a linear
    output layer, and the loss (softmax cross-entropy with integer labels by default).

    ``sizes = [n_features, hidden..., n_outputs]``.
    """

    def __init__(self, sizes, activation="relu", *, loss="cross_entropy", init="auto", seed=0,
                 dtype=np.float64):
        super().__init__(sizes, activation=activation, loss=loss, init=init, seed=seed, dtype=dtype)


class LinearRegression(Model):
    """Least squares: y_hat = x W^T + b, L = (1/N) sum_i ||y_hat_i - y_i||^2 (zeros init: convex)."""

    def __init__(self, n_features, n_outputs=1, *, init="zeros", seed=0, dtype=np.float64):
        super().__init__([n_features, n_outputs], loss="mse", init=init, seed=seed, dtype=dtype)


class LogisticRegression(Model):
    """Binary logistic regression: p = sigma(x w + b), L = mean binary cross-entropy, labels 0/1."""

    def __init__(self, n_features, *, init="zeros", seed=0, dtype=np.float64):
        super().__init__([n_features, 1], loss="bce", init=init, seed=seed, dtype=dtype)


class SoftmaxRegression(Model):
    """Multinomial logistic regression: p = softmax(x W^T + b), L = mean cross-entropy, labels 0..K-1."""

    def __init__(self, n_features, n_classes, *, init="zeros", seed=0, dtype=np.float64):
        super().__init__([n_features, n_classes], loss="cross_entropy", init=init, seed=seed, dtype=dtype)
