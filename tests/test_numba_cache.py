"""Numba's disk cache must not outlive a change to a helper the kernels inline.

Numba checks a cached kernel against its own source file; fastgd's kernels inline helpers from
fastgd/_numba/_math.py, so the check is widened to the whole package
(_compile._stale_with_package). Here a copy of the package is run, _math.py is changed, and the
copy is run again in a fresh process: the kernel must be recompiled with the changed helper.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import fastgd

pytest.importorskip("numba")

RUN = """
import json, numpy as np, fastgd
from fastgd._numba import lion
p = np.ones(7); g = np.full(7, 3.0); m = np.zeros(7)
lion(p, g, p, m, 1.0, False, False, 0.1, 0.9, 0.99, 0.0)
print(json.dumps({"file": fastgd.__file__, "m": m.tolist()}))
"""


def _run(root):
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("NUMBA_CACHE_DIR", None)       # the in-tree cache next to the copied sources
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=root, capture_output=True,
                         text=True, timeout=240, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_editing_an_inlined_helper_recompiles_the_kernels(tmp_path):
    src = os.path.dirname(fastgd.__file__)
    shutil.copytree(src, tmp_path / "fastgd", ignore=shutil.ignore_patterns("__pycache__"))
    first = _run(tmp_path)
    assert first["file"].startswith(str(tmp_path))
    assert first["m"] == pytest.approx([0.01 * 3.0] * 7)      # m = (1 - b2) * g

    helper = tmp_path / "fastgd" / "_numba" / "_math.py"
    text = helper.read_text()
    assert "gi = grad[i] * gs\n" in text
    time.sleep(0.01)
    helper.write_text(text.replace("gi = grad[i] * gs\n", "gi = grad[i] * gs * 2\n"))
    assert os.listdir(tmp_path / "fastgd" / "_numba" / "__pycache__")   # the cache is there
    second = _run(tmp_path)
    assert second["m"] == pytest.approx([0.01 * 6.0] * 7)     # the new helper, not the cache
