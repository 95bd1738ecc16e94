"""Sizes, dtypes and threads of the bench/ suites, from the environment (see conftest.py)."""
import os

from fastgd.benchmarks import parse_sizes


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


QUICK = _env_flag("FASTGD_BENCH_QUICK")
SIZES = parse_sizes(os.environ.get("FASTGD_BENCH_SIZES") or ("1e3,4e6" if QUICK else "1e3,16e6,many"))
DTYPES = tuple(t.strip() for t in (os.environ.get("FASTGD_BENCH_DTYPES")
                                    or ("float32" if QUICK else "float32,float64")).split(",") if t.strip())
THREADS = int(os.environ.get("FASTGD_BENCH_THREADS") or os.cpu_count() or 1)
