"""Thread safety (issue 8): optimizers stepped from several Python threads at once (the kernels
release the GIL) give exactly the serial results; one optimizer stepped from two threads at once
is refused with a RuntimeError; fastgd.set_num_threads holds in threads started later."""
import threading

import numpy as np
import pytest

import fastgd
from _helpers import COMPILED
from _subproc import run_python

THREADS = 4
STEPS = 40
SIZES = (100_003, 40_000, 1023, 7)   # parallel and serial kernels side by side


def _make(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(4)]
    cls, opts = [(fastgd.Adam, {}), (fastgd.AdamW, {}), (fastgd.Adam, {"amsgrad": True}),
                 (fastgd.Adam, {"weight_decay": 0.1, "maximize": True})][seed % 4]
    return params, grads, cls(params, lr=0.01, **opts)


def _train(params, grads, opt):
    for k in range(STEPS):
        opt.step(grads[k % len(grads)])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concurrent_optimizers_match_serial(backend, dtype):
    serial = [_make(seed, dtype) for seed in range(THREADS)]
    for job in serial:
        _train(*job)
    jobs = [_make(seed, dtype) for seed in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    errors = []

    def worker(job):
        try:
            barrier.wait()
            _train(*job)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
        assert not t.is_alive(), "a stepping thread hung"
    assert not errors, errors
    for (p_serial, _, _), (p_threaded, _, _) in zip(serial, jobs):
        for a, b in zip(p_serial, p_threaded):
            assert a.tobytes() == b.tobytes()   # bitwise: nothing lost, nothing mixed


class _Slow(fastgd.Adam):
    """Adam whose kernel call waits for a signal, so a second step provably overlaps the first."""
    entered = None
    release = None

    def _run(self, *args):
        self.entered.set()
        assert self.release.wait(30)
        return super()._run(*args)


@pytest.mark.timeout(60)
def test_same_optimizer_from_two_threads_is_refused(rng):
    p = rng.standard_normal(100).astype(np.float32)
    g = rng.standard_normal(100).astype(np.float32)
    opt = _Slow([p])
    saved = opt.state_dict()
    opt.entered, opt.release = threading.Event(), threading.Event()
    first = threading.Thread(target=opt.step, args=([g],))
    first.start()
    assert opt.entered.wait(30)
    before = p.copy()
    with pytest.raises(RuntimeError, match="another thread"):
        opt.step([g])
    with pytest.raises(RuntimeError, match="another thread"):
        opt.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="another thread"):
        opt.state_dict()
    assert np.array_equal(p, before)             # the refused call changed nothing
    opt.release.set()
    first.join(30)
    assert opt.state[0]["step"] == 1
    opt.step([g])                                # free again once the first step is done
    assert opt.state[0]["step"] == 2


def test_reentrant_step_in_same_thread_is_allowed(rng):
    """The guard refuses other threads only: a subclass step calling the base step is fine, and
    so is a guarded method (state_dict) called from inside a step: the lock is re-entrant."""
    class Twice(fastgd.Adam):
        def step(self, grads, **kw):
            super().step(grads, **kw)
            super().step(grads, **kw)

        def _gather(self, *args, **kwargs):     # runs inside the guarded base step
            self.seen.append(self.state_dict())
            return super()._gather(*args, **kwargs)
    p = rng.standard_normal(10)
    q = p.copy()
    opt = Twice([p])
    opt.seen = []
    opt.step([np.ones(10)])
    assert opt.state[0]["step"] == 2                # both inner steps ran
    # each nested state_dict() ran and saw the state as it was before that step
    assert [sd["state"].get(0, {}).get("step") for sd in opt.seen] == [None, 1]
    plain = fastgd.Adam([q])
    plain.step([np.ones(10)])
    plain.step([np.ones(10)])
    np.testing.assert_array_equal(p, q)


@pytest.mark.timeout(60)
def test_set_num_threads_holds_in_new_threads(backend):
    module = fastgd.backends._BACKENDS[backend].module
    old = fastgd.get_num_threads()
    seen = {}
    try:
        fastgd.set_num_threads(1)

        def worker():
            p = np.ones(100_003, np.float32)
            fastgd.Adam([p]).step([np.ones_like(p)])   # a parallel-path call in this thread
            seen["fastgd"] = fastgd.get_num_threads()
            seen["module"] = module.get_num_threads()
            if backend == "numba":
                import numba
                seen["numba"] = numba.get_num_threads()

        t = threading.Thread(target=worker)
        t.start()
        t.join(30)
    finally:
        fastgd.set_num_threads(old)
    assert set(seen.values()) == {1}, seen


@pytest.mark.timeout(150)
def test_numba_workqueue_layer_concurrent_launches():
    """Numba's 'workqueue' layer aborts the process on concurrent parallel launches; fastgd
    serialises them there (and only there), so threads still get the serial results."""
    pytest.importorskip("numba")
    out = run_python(f"""
import threading, numpy as np, numba, fastgd
fastgd.set_backend("numba")
def make(seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(100_003).astype(np.float32)
    return p, rng.standard_normal(100_003).astype(np.float32), fastgd.Adam([p])
serial = [make(s) for s in range({THREADS})]
for p, g, o in serial:
    for _ in range(20): o.step([g])
jobs = [make(s) for s in range({THREADS})]
def work(job):
    p, g, o = job
    for _ in range(20): o.step([g])
ts = [threading.Thread(target=work, args=(j,)) for j in jobs]
[t.start() for t in ts]; [t.join() for t in ts]
assert all(a[0].tobytes() == b[0].tobytes() for a, b in zip(serial, jobs))
print("layer", numba.threading_layer())
""", env={"NUMBA_THREADING_LAYER": "workqueue"}, timeout=120)
    assert "layer workqueue" in out
