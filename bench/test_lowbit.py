"""AdamW with 8-bit and 4-bit states (issue 15; fastgd.lowbit_bench.LOWBIT_RECIPES), per
backend: adam_many on cython and numba in each recipe (fp32, 8bit, bf16+8bit, 4bit), torch fused
AdamW (float32), bitsandbytes AdamW8bit and 32-bit AdamW (CPU), torchao AdamW8bit and AdamW4bit
(torch.compile'd on the first, untimed, call), each in its recipe, and a stream moving exactly
the recipe's bytes (its roles and widths: codes and absmax of the quantized states). Rows that
cannot run here are skipped with the reason (a backend without quantized adam_many yet, a peer
absent, torchao on a size it keeps float32 states for: below 4096 elements or not a multiple of
its block, 256 / 128).

    python -m pytest bench/test_lowbit.py --benchmark-only
    FASTGD_BENCH_LOWBIT_SIZES=16e6 python -m pytest bench/test_lowbit.py --benchmark-only

Groups are "adamw <recipe> <size>"; ``extra_info`` carries the formats, bytes_per_element and
gbps. The default size is small (2**20 = 1,048,576 elements: at 1e6, no multiple of 256, torchao
would keep float32 states); for the table with each row's fraction of a stream measured
round-robin in the same run, the speedups over the peers, issue 15's targets and the state
memory, use ``fastgd bench --preset lowbit``.
"""
import os

import pytest

import fastgd
from fastgd.benchmarks import Skip, Stream, parse_sizes, release_pool, set_threads
from fastgd.lowbit_bench import COMPILED, LOWBIT_RECIPES, PEERS, make_lowbit_case

from _bench_config import THREADS, time_step

# 2**20: about 1e6 and a multiple of torchao's blocks (at 1e6 it keeps float32 states)
SIZES = parse_sizes(os.environ.get("FASTGD_BENCH_LOWBIT_SIZES") or "1048576")
ROWS = [(recipe, backend) for recipe in LOWBIT_RECIPES
        for backend in ("stream",) + COMPILED + tuple(p for p, (_, r, _) in PEERS.items() if r == recipe.name)]


@pytest.fixture
def restore_backend():
    with fastgd.use_backend(fastgd.get_backend()):
        yield
    release_pool()


@pytest.mark.parametrize("size", SIZES, ids=[s.label.replace(",", "_") for s in SIZES])
@pytest.mark.parametrize("recipe, backend", ROWS, ids=[f"{r.name}-{b}" for r, b in ROWS])
def test_lowbit_step(benchmark, restore_backend, recipe, backend, size):
    set_threads(THREADS)
    if backend == "stream":
        fn, _, _ = Stream(size.elements).case_formats(recipe.pattern)
    else:
        try:
            fn = make_lowbit_case(recipe, backend, size)   # its first call: the compile, the cache load
        except Skip as why:
            pytest.skip(str(why))
    benchmark.group = f"adamw {recipe.name} {size.label}"
    benchmark.extra_info.update(rule="adamw", recipe=recipe.name, formats=recipe.formats, size=size.label,
                                elements=size.elements, tensors=size.tensors, backend=backend,
                                threads=THREADS, bytes_per_element=recipe.bytes_per_element,
                                fastgd=fastgd.__version__)
    fn()
    time_step(benchmark, fn)
    if benchmark.stats is not None:   # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["gbps"] = recipe.bytes_per_element * size.elements / benchmark.stats.stats.median / 1e9
