"""Sizes, dtypes and threads of the bench/ suites, from the environment (see conftest.py), and
how a row is timed."""
import os
import time

from fastgd.benchmarks import parse_sizes


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


QUICK = _env_flag("FASTGD_BENCH_QUICK")
SIZES = parse_sizes(os.environ.get("FASTGD_BENCH_SIZES") or ("1e3,4e6" if QUICK else "1e3,16e6,many"))
DTYPES = tuple(t.strip() for t in (os.environ.get("FASTGD_BENCH_DTYPES")
                                    or ("float32" if QUICK else "float32,float64")).split(",") if t.strip())
THREADS = int(os.environ.get("FASTGD_BENCH_THREADS") or os.cpu_count() or 1)


def time_step(benchmark, fn):
    """Time ``fn`` with pytest-benchmark: its own calibration, or in quick mode 5 rounds of
    about 10 ms each (enough for a median, quick enough for ~200 rows)."""
    if not QUICK:
        benchmark(fn)
        return
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    benchmark.pedantic(fn, rounds=5, iterations=max(1, int(0.01 / one)), warmup_rounds=1)
