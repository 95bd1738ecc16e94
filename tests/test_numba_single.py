"""What only the Numba single kernels have (fastgd/_numba/_single.py): each flag combination's
loop compiled on the first call that needs it and called by address from a table, the table's
type tag checked before anything is written, and the body and loops cached on disk.
tests/test_family.py and tests/test_adam.py check every rule and option against the reference
on both backends; here the machinery itself."""
import numpy as np
import pytest

import fastgd._numba as nb
from fastgd import _reference as R
from fastgd._numba._compile import PARALLEL_MIN
from fastgd._numba._single import single_kernel
from fastgd._numba.rmsprop import _rmsprop, _rmsprop_consts, _rmsprop_step

from _subproc import json_runs_with_cache


def _rmsprop_case(n, seed, centered, momentum):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    sq = np.abs(rng.standard_normal(n)).astype(np.float32) + 0.1
    buf = rng.standard_normal(n).astype(np.float32)
    avg = 0.1 * rng.standard_normal(n).astype(np.float32)
    # lr, alpha, eps, weight_decay, momentum, centered
    return [p, g, p, sq, buf, avg], (1e-2, 0.99, 1e-8, 0.01, momentum, centered)


def _step(kernel, arrays, scalars):
    kernel(*arrays, 1.0, False, False, *scalars)


@pytest.mark.parametrize("n", [1001, PARALLEL_MIN + 77])     # serial, parallel
def test_a_call_compiles_only_the_loops_it_needs(n):
    """RMSprop has eight loops (use_acc x centered x momentum); a call enters the address of
    its own only, and each result is the reference's. (A kernel of its own: the process may
    have run fastgd's rmsprop with use_acc before.)"""
    kernel = single_kernel(_rmsprop, _rmsprop_consts, _rmsprop_step, 3, 3)
    compiled = kernel.compiled
    parallel = n >= PARALLEL_MIN
    for centered, momentum in [(False, 0.0), (True, 0.9)]:
        arrays, scalars = _rmsprop_case(n, 3, centered, momentum)
        expected = [a.copy() for a in arrays]
        expected[2] = expected[0]
        R.rmsprop(*expected, 1.0, False, False, *scalars)
        _step(kernel, arrays, scalars)
        for name, a, e in zip(("param", "grad", "param", "square_avg", "momentum_buffer",
                               "grad_avg"), arrays, expected):
            np.testing.assert_allclose(a, e, rtol=2e-6, atol=1e-7, err_msg=name)
    table = compiled.tables[4, parallel]
    k_plain, k_centered = 0, 2 + 4            # flag bits: use_acc 1, centered 2, momentum 4
    assert table[1 + k_plain] and table[1 + k_centered]
    assert ((False, False, False), parallel) in compiled.loops
    assert ((False, True, True), parallel) in compiled.loops
    # use_acc was never asked for: its loops are not compiled
    for k in range(8):
        if k & 1:
            assert table[1 + k] == 0
            assert (tuple(bool(k >> j & 1) for j in range(3)), parallel) not in compiled.loops


def test_a_table_for_other_scalar_types_is_refused_before_any_write():
    """The body calls its loops by address, so it and they must agree on the type of the
    scalars tuple: the table carries the type tag of the one its loops were compiled for, and
    the body compares it with its own before touching an element."""
    arrays, scalars = _rmsprop_case(513, 4, False, 0.0)
    _step(nb.rmsprop, arrays, scalars)                    # compiled, entered
    table = nb.rmsprop.compiled.tables[4, False]
    before = [a.copy() for a in arrays]
    table[0] ^= 1
    try:
        with pytest.raises(TypeError, match="other scalar types"):
            _step(nb.rmsprop, arrays, scalars)
    finally:
        table[0] ^= 1
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)
    _step(nb.rmsprop, arrays, scalars)                    # the table holds again
    assert not np.array_equal(arrays[0], before[0])


CACHE_RUN = """
import json, numpy as np, fastgd._numba as nb
out = {}
for n in (100, 40_000):                          # the serial and the parallel loop
    p, g, m = np.ones(n, np.float32), np.full(n, 3.0, np.float32), np.zeros(n, np.float32)
    nb.lion(p, g, p, m, 1.0, False, False, 0.1, 0.9, 0.99, 0.0)
    out[n] = float(m[0])
c = nb.lion.compiled
ds = [c.body] + list(c.loops.values())
out["loops"] = len(c.loops)
out["hits"] = sum(sum(d.stats.cache_hits.values()) for d in ds)
out["misses"] = sum(sum(d.stats.cache_misses.values()) for d in ds)
print(json.dumps(out))
"""


def test_body_and_loops_are_cached_on_disk(tmp_path):
    """The body and each loop compiled in one process are loaded from the disk cache in the
    next, not compiled again."""
    first, second = json_runs_with_cache(CACHE_RUN, tmp_path)
    assert first["100"] == second["100"] == pytest.approx(0.03)     # m = (1 - b2) * g
    assert first["loops"] == second["loops"] == 2                   # serial and parallel
    assert first["hits"] == 0 and first["misses"] == 3              # body and both loops
    assert second["hits"] == 3 and second["misses"] == 0
