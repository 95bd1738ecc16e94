"""Fuzzing (issue 8): every public functional kernel and every rule's optimizer step, over random
shapes, dtypes, strides, flags (read-only, non-contiguous, aliasing), hyperparameters and values
(0, denormals, +-1e30, NaN, inf), on each compiled backend against the NumPy reference: the same
result, or the same TypeError/ValueError with every input unchanged; never a crash.

The fuzzer (tests/_fuzz.py, hypothesis) discovers its targets (fastgd.functional's ``*_``
functions, fastgd.rules.RULES) and runs in a subprocess: a segfault or a hang fails these tests
and names the target, instead of killing the test run. FASTGD_FUZZ_EXAMPLES (default 80 per
functional target and backend, half that per rule) and FASTGD_FUZZ_SEED scale and vary it.
"""
import json

import pytest

from _fuzz import EXAMPLES, functional_targets
from _helpers import COMPILED, require_backend, usable
from _subproc import run_python
from fastgd.rules import RULES

TARGETS = [f"functional:{n}" for n in functional_targets()] + [f"rule:{r}" for r in sorted(RULES)]


@pytest.fixture(scope="module")
def report():
    out = run_python(f"import _fuzz; _fuzz.main({usable(COMPILED)!r})", timeout=280)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(report, target, backend):
    require_backend(backend)
    stats = report[f"{target}:{backend}"]
    assert stats["failure"] is None, stats["failure"]
    minimum = EXAMPLES if target.startswith("functional:") else max(EXAMPLES // 2, 10)
    assert stats["cases"] >= minimum, stats
    assert stats["valid"] > 0 and stats["refused"] > 0, stats   # both paths were exercised
    print(target, backend, stats)
