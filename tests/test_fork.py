"""Fork safety (issue 8): after parallel steps in the parent, a forked child steps with either
backend, gets the right result and exits; 'spawn' and 'forkserver' work; optimizers pickle.

Every scenario runs in a fresh interpreter with a timeout (tests/_subproc.py): a child that hangs
(libgomp's pool does not survive fork) or is killed (Numba's OpenMP layer) fails the test.
"""
import pickle

import numpy as np
import pytest

import fastgd
from _helpers import COMPILED, require_backend
from _subproc import run_python

# Shared by the scripts: a model with one parameter above the parallel threshold (32768) and
# small ones, and a deterministic gradient sequence.
MODEL = """
import os, sys, pickle
import numpy as np
import fastgd

def model(dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for n in (100_003, 1023, 7)]

def grads(k, params):
    rng = np.random.default_rng(1000 + k)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]

def run(opt, params, first, last):
    for k in range(first, last):
        opt.step(grads(k, params))
"""

FORKS = 4  # children (and one grandchild each) per backend in test_os_fork


@pytest.mark.parametrize("backend", COMPILED)
def test_os_fork_after_parallel_steps(backend):
    """os.fork() after parallel steps: every child and grandchild steps serially, gets the bitwise
    result the parent gets for the same steps, and exits 0; the parent stays parallel."""
    require_backend(backend)
    out = run_python(MODEL + f"""
fastgd.set_backend({backend!r})
fastgd.set_num_threads(2)            # a real thread pool even on a one-core machine
params = model()
opt = fastgd.Adam(params, amsgrad=True)
run(opt, params, 0, 3)               # parallel steps: the pool is started
snapshot = pickle.dumps((opt, params))
survived = 0
for child in range({FORKS}):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        assert fastgd.get_num_threads() == 1
        import threading                 # a thread of the child has no pool either: serial too
        o3, p3 = pickle.loads(snapshot)
        t = threading.Thread(target=run, args=(o3, p3, 3, 4))
        t.start(); t.join(30)
        assert not t.is_alive() and o3.state[0]["step"] == 4
        run(opt, params, 3, 6)
        pid2 = os.fork()             # a grandchild: still serial, still fine
        if pid2 == 0:
            run(opt, params, 6, 7)
            os._exit(0)
        _, st2 = os.waitpid(pid2, 0)
        with os.fdopen(w, "wb") as f:
            f.write(pickle.dumps((st2, [p.tobytes() for p in params])))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        st2, child_params = pickle.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert status == 0 and st2 == 0, (status, st2)
    o2, p2 = pickle.loads(snapshot)
    run(o2, p2, 3, 6)                # the same steps in the parent, in parallel
    assert [p.tobytes() for p in p2] == child_params
    survived += 2
assert fastgd.get_num_threads() == 2
print("survived", survived)
""", timeout=120)
    assert f"survived {2 * FORKS}" in out


@pytest.mark.parametrize("backend", COMPILED)
def test_fork_before_any_parallel_step_keeps_threads(backend):
    """A child forked before any pool started (a worker pool made first) stays parallel."""
    require_backend(backend)
    out = run_python(MODEL + f"""
fastgd.set_backend({backend!r})
fastgd.set_num_threads(2)
pid = os.fork()
if pid == 0:
    params = model(); opt = fastgd.Adam(params)
    run(opt, params, 0, 2)
    os._exit(0 if fastgd.get_num_threads() == 2 else 3)
_, status = os.waitpid(pid, 0)
print("status", status)
""", timeout=60)
    assert "status 0" in out


_MP_SCRIPT = MODEL + """
import multiprocessing as mp

def work(payload):
    backend, blob = payload
    fastgd.set_backend(backend)
    opt, params = pickle.loads(blob)
    run(opt, params, 3, 6)
    return [p.tobytes() for p in params], opt.state_dict()["state"][0]["step"]

if __name__ == "__main__":
    method, backend = sys.argv[1], sys.argv[2]
    fastgd.set_backend(backend)
    fastgd.set_num_threads(2)
    params = model()
    opt = fastgd.AdamW(params)
    run(opt, params, 0, 3)                    # parallel steps before the workers exist
    blob = pickle.dumps((opt, params))
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(work, [(backend, blob)] * 2, chunksize=1)
    run(opt, params, 3, 6)
    expected = [p.tobytes() for p in params]
    assert all(r == (expected, 6) for r in results), method
    print("ok", method, len(results))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_start_methods(method, tmp_path):
    """A pickled optimizer (state included) continues in multiprocessing workers of every start
    method exactly as in the parent. Each backend is exercised (numba for spawn/forkserver, whose
    workers import it anyway; both for fork)."""
    script = tmp_path / "mp_script.py"
    script.write_text(_MP_SCRIPT)
    backends = COMPILED if method == "fork" else COMPILED[-1:]
    require_backend(*backends)
    for backend in backends:
        out = run_python(f"import runpy, sys; sys.argv = [{str(script)!r}, {method!r}, {backend!r}]; "
                         f"runpy.run_path({str(script)!r}, run_name='__main__')", timeout=180)
        assert f"ok {method} 2" in out


def test_optimizer_pickles_with_state(rng):
    params = [rng.standard_normal(n).astype(np.float32) for n in (5, 300)]
    opt = fastgd.Adam(params, lr=0.01, amsgrad=True)
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    opt.step(grads)
    opt2, params2 = pickle.loads(pickle.dumps((opt, params)))
    assert opt2.param_groups[0]["params"][0] is params2[0]      # identity kept in one pickle
    for o, ps in ((opt, params), (opt2, params2)):
        o.step(grads)
        o.step(grads)
    for a, b in zip(params, params2):
        assert a.tobytes() == b.tobytes()
    assert opt2.state[1]["step"] == 3
