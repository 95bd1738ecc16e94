"""One optimizer step of every rule in fastgd.rules.RULES, per backend, size and dtype.

Nothing is listed here: a rule added to RULES is benchmarked, with its torch and DeepSpeed peers
where they exist (rows that cannot run here are skipped with the reason). See conftest.py.
"""
import contextlib

import numpy as np
import pytest

import fastgd
from fastgd.benchmarks import (FASTGD_BACKENDS, PEERS, REFERENCE_SUBSAMPLE, Skip, Stream,
                               bytes_per_element, make_case, release_pool, set_threads)
from fastgd.rules import RULES

from _bench_config import DTYPES, QUICK, SIZES, THREADS, time_step

BACKENDS = ("stream",) + FASTGD_BACKENDS + PEERS


@pytest.fixture
def restore_backend():
    with fastgd.use_backend(fastgd.get_backend()):
        yield
    release_pool()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=[s.label.replace(",", "_") for s in SIZES])
@pytest.mark.parametrize("rule", list(RULES))
def test_step(benchmark, restore_backend, rule, size, backend, dtype):
    rule = RULES[rule]
    if QUICK and backend == "numpy" and size.elements > REFERENCE_SUBSAMPLE:
        pytest.skip("quick mode: the NumPy reference is timed at the small size only")
    set_threads(THREADS)
    bpe = bytes_per_element(rule, dtype)
    if backend == "stream":
        # The rule's access pattern over the same bytes, trivial arithmetic: the memory floor.
        fn, _, _ = Stream(size.elements).case(rule.written, dtype)
        layout = "stream"
    else:
        try:
            fn, layout = make_case(rule, backend, size, np.dtype(dtype))
        except Skip as why:
            pytest.skip(str(why))
    benchmark.group = f"{rule.name} {size.label} {dtype}"
    benchmark.extra_info.update(rule=rule.name, size=size.label, elements=size.elements,
                                tensors=size.tensors, layout=layout, dtype=dtype, backend=backend,
                                threads=THREADS, bytes_per_element=bpe, fastgd=fastgd.__version__)
    # A fastgd case steps on the active backend.
    with fastgd.use_backend(backend) if backend in FASTGD_BACKENDS else contextlib.nullcontext():
        fn()  # first call: lazy state, Numba's cache load, DeepSpeed's JIT build
        time_step(benchmark, fn)
    if benchmark.stats is not None:   # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["gbps"] = bpe * size.elements / benchmark.stats.stats.median / 1e9
