"""Losses with their gradients, numerically stable for logits of any finite size (+-1000 included).

Each function returns ``(loss, grad)``: the mean loss over the batch (``reduction="sum"`` for the
sum) and its gradient with respect to the predictions/logits, the start of backprop. Stability
comes from never exponentiating a large positive number: log-sum-exp subtracts the row maximum,
and log(1 + e^z) is written as max(z, 0) + log1p(e^-|z|).
"""
import numpy as np

__all__ = ["mse", "bce_with_logits", "softmax_cross_entropy", "sigmoid", "softmax", "log_softmax"]


def _float(name, a):
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric; got dtype {a.dtype}")
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def _reduce(per_sample, n, reduction):
    if reduction == "mean":
        return float(per_sample.sum() / n), 1.0 / n
    if reduction == "sum":
        return float(per_sample.sum()), 1.0
    raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")


def _check_batch(pred):
    if pred.ndim == 0 or pred.shape[0] == 0:
        raise ValueError(f"predictions must have a non-empty batch dimension; got shape {pred.shape}")


def sigmoid(z):
    """sigma(z) = 1 / (1 + e^-z), computed as e^z / (1 + e^z) for z < 0 so nothing overflows."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype if z.dtype.kind == "f" else np.float64)


def log_softmax(z, axis=-1):
    """log softmax(z)_k = z_k - max(z) - log(sum_j e^(z_j - max(z)))."""
    z = np.asarray(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z, axis=-1):
    """softmax(z)_k = e^(z_k - max z) / sum_j e^(z_j - max z)."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def mse(pred, target, reduction="mean"):
    """Mean squared error: L = (1/N) sum_i ||pred_i - target_i||^2, dL/dpred = (2/N) (pred - target).

    N is the number of samples (rows), so for vector targets the squared error is summed over a row's
    outputs, then averaged over rows: the "mean" of a batch is over samples, the same convention as
    the other losses (torch's MSELoss averages over every element instead).
    """
    pred = _float("pred", pred)
    target = _float("target", target)
    _check_batch(pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target has {target.shape}")
    diff = pred - target
    loss, scale = _reduce(diff * diff, pred.shape[0], reduction)
    return loss, (2.0 * scale) * diff


def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits z with targets y in [0, 1]:

    L = (1/N) sum_i [log(1 + e^z_i) - y_i z_i] = (1/N) sum_i [max(z_i, 0) - y_i z_i + log1p(e^-|z_i|)],
    dL/dz = (sigma(z) - y) / N.
    """
    z = _float("logits", logits)
    y = _float("target", target)
    _check_batch(z)
    if z.shape != y.shape:
        raise ValueError(f"logits have shape {z.shape} but target has {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError("binary targets must lie in [0, 1]")
    per = np.maximum(z, 0) - y * z + np.log1p(np.exp(-np.abs(z)))
    loss, scale = _reduce(per, z.shape[0], reduction)
    return loss, scale * (sigmoid(z) - y)


def softmax_cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy with integer labels c_i in [0, K):

    L = (1/N) sum_i [logsumexp(z_i) - z_{i, c_i}],  dL/dz_i = (softmax(z_i) - onehot(c_i)) / N.
    """
    z = _float("logits", logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes); got shape {z.shape}")
    _check_batch(z)
    labels = check_labels(labels, z.shape[1], z.shape[0])
    logp = log_softmax(z, axis=1)
    rows = np.arange(z.shape[0])
    loss, scale = _reduce(-logp[rows, labels], z.shape[0], reduction)
    grad = np.exp(logp)
    grad[rows, labels] -= 1.0
    grad *= scale
    return loss, grad


def check_labels(labels, n_classes, n=None):
    """Integer class labels as an int64 array, each in [0, n_classes); ValueError/TypeError otherwise."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise TypeError("class labels must be integers")
    elif labels.dtype.kind not in "iub":
        raise TypeError(f"class labels must be integers; got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"class labels must be 1-D; got shape {labels.shape}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"got {labels.shape[0]} labels for {n} samples")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)][0]
        raise ValueError(f"class label {bad} is out of range [0, {n_classes})")
    return labels
