"""pytest-benchmark suites of fastgd: every rule of fastgd.rules.RULES on every backend.

    python -m pytest bench/ --benchmark-only                       # full: 1e3, 16e6, many; float32+64
    FASTGD_BENCH_QUICK=1 python -m pytest bench/ --benchmark-only  # quick: 1e3, 4e6; float32 (< 2 min)
    python -m pytest bench/ --benchmark-only -k "adam and 16"       # one rule family / size
    python -m pytest bench/ --benchmark-only --benchmark-json=A.json;  pytest-benchmark compare A.json B.json

Environment: FASTGD_BENCH_QUICK=1 (quick mode), FASTGD_BENCH_THREADS=N (default: all cores),
FASTGD_BENCH_SIZES="1e3,16e6,many" and FASTGD_BENCH_DTYPES="float32,float64" override the sizes
and dtypes. Groups are "<rule> <size> <dtype>"; each holds a stream row (the rule's access pattern
over the same number of elements: the memory floor), the fastgd backends, the NumPy reference,
and the peers present (torch fused/foreach, DeepSpeed). ``extra_info`` carries bytes_per_element
and gbps. For one table with the bandwidth measured round-robin in the same run, use
``fastgd bench``.
"""
import pytest

from _bench_config import DTYPES, QUICK, SIZES, THREADS


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject's addopts has --benchmark-disable (so tests/ never times anything); asking for
    # --benchmark-only on bench/ means the user wants the timings: let it through.
    if getattr(config.option, "benchmark_only", False):
        config.option.benchmark_disable = False


def pytest_report_header(config):
    mode = "QUICK (FASTGD_BENCH_QUICK=1)" if QUICK else "full"
    return (f"fastgd bench: {mode}; sizes {', '.join(s.label for s in SIZES)}; dtypes {', '.join(DTYPES)}; "
            f"threads {THREADS}")
