"""Data iteration for gradient descent: full batch, stochastic (batch 1) and mini-batch.

    batch_size=None -> batch gradient descent: one batch, the whole set
    batch_size=1    -> stochastic gradient descent: one sample per step
    batch_size=b    -> mini-batch gradient descent: ceil(n / b) steps per epoch (floor with drop_last)

Shuffling draws a fresh permutation every epoch from one seeded generator, so a run is
reproducible and two epochs still see different orders.
"""
import math
import numbers

import numpy as np

from .init import as_generator

__all__ = ["check_xy", "Batches", "batches", "train_test_split"]


def check_xy(X, y, *, name="data"):
    """X as a 2-D float array and y with as many rows; clear errors for empty or mismatched data."""
    if X is None or y is None:
        raise TypeError(f"{name}: X and y are both required")
    X = np.asarray(X)
    y = np.asarray(y)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name}: X must be numeric; got dtype {X.dtype}")
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    if X.ndim == 1:
        X = X[:, None]  # one feature
    if X.ndim != 2:
        raise ValueError(f"{name}: X must be 2-D (samples, features); got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: X is empty (0 samples)")
    if y.ndim == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: X has {X.shape[0]} samples but y has "
                         f"{y.shape[0] if y.ndim else 'a scalar'}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: X contains NaN or inf")
    return X, y


class Batches:
    """Re-iterable batches of (X, y): each ``iter()`` is one epoch.

    Yields views (``X[i:j]``) when not shuffling, copies of the selected rows when shuffling.
    """

    def __init__(self, X, y, batch_size=None, *, shuffle=False, seed=None, drop_last=False):
        self.X, self.y = check_xy(X, y)
        n = self.X.shape[0]
        if batch_size is None:
            batch_size = n
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"batch_size must be an int or None; got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.batch_size > n:
            raise ValueError(f"drop_last with batch_size {batch_size} > {n} samples leaves no batch")
        self._rng = as_generator(seed)

    def __len__(self):
        n = self.X.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n, b = self.X.shape[0], self.batch_size
        order = self._rng.permutation(n) if self.shuffle else None
        for k in range(len(self)):
            lo, hi = k * b, min((k + 1) * b, n)
            if order is None:
                yield self.X[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.X[idx], self.y[idx]


def batches(X, y, batch_size=None, *, shuffle=False, seed=None, drop_last=False):
    """One epoch of (X_batch, y_batch) pairs; see :class:`Batches`."""
    return iter(Batches(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last))


def train_test_split(X, y, test_fraction=0.25, *, seed=0, stratify=False):
    """Shuffle and split into (X_train, X_test, y_train, y_test), ``test_fraction`` of rows in test.

    ``stratify=True`` (integer labels) keeps each class's share equal in both parts.
    """
    X, y = check_xy(X, y)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    rng = as_generator(seed)
    if stratify:
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.append(idx[:int(round(test_fraction * idx.size))])
        test = np.sort(np.concatenate(test))
        mask = np.zeros(X.shape[0], bool)
        mask[test] = True
        train = rng.permutation(np.flatnonzero(~mask))
        test = rng.permutation(test)
    else:
        order = rng.permutation(X.shape[0])
        k = int(round(test_fraction * X.shape[0]))
        test, train = order[:k], order[k:]
    if train.size == 0 or test.size == 0:
        raise ValueError("the split leaves an empty part; use more data or another test_fraction")
    return X[train], X[test], y[train], y[test]
