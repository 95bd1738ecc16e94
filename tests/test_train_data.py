"""Data iteration: full batch, SGD (batch 1), mini-batch; shuffle, seed, drop_last; splits; errors."""
import numpy as np
import pytest

from fastgd.train import Batches, batches, train_test_split

X = np.arange(20.0).reshape(10, 2)
y = np.arange(10)


def _rows(it):
    return [yb.tolist() for _, yb in it]


def test_full_batch_sgd_and_minibatch():
    assert _rows(batches(X, y)) == [list(range(10))]
    assert _rows(batches(X, y, 1)) == [[i] for i in range(10)]
    assert _rows(batches(X, y, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _rows(batches(X, y, 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(Batches(X, y, 4)) == 3 and len(Batches(X, y, 4, drop_last=True)) == 2
    for Xb, yb in batches(X, y, 3):
        assert np.array_equal(Xb[:, 0], 2.0 * yb)  # rows stay paired with their labels


def test_shuffle_is_seeded_and_differs_between_epochs():
    a = Batches(X, y, 3, shuffle=True, seed=5)
    b = Batches(X, y, 3, shuffle=True, seed=5)
    first_a, second_a = _rows(a), _rows(a)
    assert first_a == _rows(b)                  # same seed, same order
    assert first_a != second_a                  # a new permutation each epoch
    assert sorted(sum(first_a, [])) == list(range(10))
    for Xb, yb in a:
        assert np.array_equal(Xb[:, 0], 2.0 * yb)


def test_train_test_split_stratified():
    Xs = np.random.default_rng(0).standard_normal((100, 3))
    ys = np.repeat(np.arange(4), 25)
    Xtr, Xte, ytr, yte = train_test_split(Xs, ys, 0.2, seed=1, stratify=True)
    assert len(Xte) == 20 and len(Xtr) == 80
    assert np.bincount(yte).tolist() == [5, 5, 5, 5]
    assert set(map(tuple, Xtr.round(12))).isdisjoint(map(tuple, Xte.round(12)))


@pytest.mark.parametrize("call, err", [
    (lambda: Batches(np.zeros((0, 2)), np.zeros(0)), ValueError),      # empty
    (lambda: Batches(X, y[:9]), ValueError),                           # mismatched lengths
    (lambda: Batches(X, y, 0), ValueError),
    (lambda: Batches(X, y, 2.5), TypeError),
    (lambda: Batches(X, y, 11, drop_last=True), ValueError),           # nothing left
    (lambda: Batches(np.zeros((2, 2, 2)), np.zeros(2)), ValueError),
    (lambda: Batches(np.array([[np.nan]]), np.zeros(1)), ValueError),
    (lambda: Batches(X, y, seed="abc"), TypeError),
    (lambda: train_test_split(X, y, 1.5), ValueError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
