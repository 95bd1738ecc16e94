"""AdamW in every storage-format recipe of issue 14 (fastgd.benchmarks.FORMAT_RECIPES), per
backend: adam_many on cython and numba, the single float32 kernel ("cython adam", the step
before adam_many), torch fused AdamW and DeepSpeedCPUAdam in the formats they have, and a
stream moving exactly the recipe's bytes (its roles and widths). Rows that cannot run here are
skipped with the reason (a backend without adam_many yet, a peer absent or without the format).

    python -m pytest bench/test_formats.py --benchmark-only
    FASTGD_BENCH_FORMATS_SIZES=16e6 python -m pytest bench/test_formats.py --benchmark-only

Groups are "adamw <recipe> <size>"; ``extra_info`` carries the formats, bytes_per_element and
gbps. The default size is small (1e6 elements); for the table with each row's fraction of a
stream measured round-robin in the same run and issue 14's targets, use
``fastgd bench --preset formats``.
"""
import contextlib
import os

import pytest

import fastgd
from fastgd.benchmarks import (BEFORE, FORMAT_RECIPES, Skip, Stream, make_format_case, parse_sizes,
                               release_pool, set_threads)

from _bench_config import THREADS, time_step

SIZES = parse_sizes(os.environ.get("FASTGD_BENCH_FORMATS_SIZES") or "1e6")
BACKENDS = ("stream", "cython", "numba", "cython" + BEFORE, "numba" + BEFORE, "torch-fused", "deepspeed")


@pytest.fixture
def restore_backend():
    with fastgd.use_backend(fastgd.get_backend()):
        yield
    release_pool()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=[s.label.replace(",", "_") for s in SIZES])
@pytest.mark.parametrize("recipe", FORMAT_RECIPES, ids=[r.name for r in FORMAT_RECIPES])
def test_format_step(benchmark, restore_backend, recipe, size, backend):
    set_threads(THREADS)
    if backend == "stream":
        fn, _, _ = Stream(size.elements).case_formats(recipe.pattern)
    else:
        try:
            fn = make_format_case(recipe, backend, size)
        except Skip as why:
            pytest.skip(str(why))
    uses = backend.removesuffix(BEFORE)
    benchmark.group = f"adamw {recipe.name} {size.label}"
    benchmark.extra_info.update(rule="adamw", recipe=recipe.name, formats=recipe.formats, size=size.label,
                                elements=size.elements, tensors=size.tensors, backend=backend,
                                threads=THREADS, bytes_per_element=recipe.bytes_per_element,
                                fastgd=fastgd.__version__)
    with fastgd.use_backend(uses) if uses in ("cython", "numba") else contextlib.nullcontext():
        fn()  # first call: Numba's compile or cache load, DeepSpeed's JIT build
        time_step(benchmark, fn)
    if benchmark.stats is not None:   # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["gbps"] = recipe.bytes_per_element * size.elements / benchmark.stats.stats.median / 1e9

