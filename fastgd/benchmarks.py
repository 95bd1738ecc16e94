"""Measurement engine behind ``fastgd bench``, ``fastgd verify`` and the pytest-benchmark suites.

Everything iterates ``fastgd.rules.RULES``: a rule that lands there is benchmarked, verified and
compared against its peers with no edit here. A *case* is one zero-argument callable that does
one optimizer step of one rule on one backend over arrays of one size and dtype:

  fastgd backends  ``cython``, ``numba``                 ``rule.make(params).step(grads)``
  the reference    ``numpy``                             the same optimizer on fastgd._reference
  peers            ``torch-fused``, ``torch-foreach``    ``torch.optim.<rule.torch>(..., fused/foreach=True)``
                   ``deepspeed``                         DeepSpeed's CPUAdam / CPUAdagrad (hand-written
                                                         SIMD + OpenMP), where it implements the rule
  roofline         ``stream``                            the Cython stream kernel with the rule's
                                                         access pattern (``rule.written`` arrays read
                                                         and written, the gradient read)

``run_bench`` times, for each size, rule and thread count, the stream kernel and every case
round-robin (fastgd.timing), so the bandwidth each row is divided by was measured in the same
rounds as the row. The stream arrays are always far larger than the last-level cache.

JSON schema (``fastgd bench --json FILE``), ``"schema": "fastgd-bench/1"``::

  {
    "schema": "fastgd-bench/1",
    "created": "2026-11-25T13:00:00+00:00",          # UTC
    "argv": ["bench", "--quick", ...],
    "environment": {                                 # see environment()
      "fastgd", "python", "numpy", "numba", "torch", "deepspeed",   # versions (null if absent)
      "cpu", "simd": [...], "cores", "l3_bytes", "numba_threading_layer",
      "openmp_version", "build": {... build_info.json ...}, "peers": {name: null | "why absent"}
    },
    "settings": {"rules": [...], "sizes": [{"label", "elements", "tensors"}], "dtype",
                 "threads": [...], "backends": [...], "rounds", "min_seconds", "quick",
                 "stream_elements"},
    "results": [                                     # one per measured row
      {"rule", "size", "elements", "tensors", "layout", "dtype", "threads",
       "backend",                 # "stream" | "cython" | "numba" | "numpy" | "torch-fused" | ...
       "kind",                    # "stream" | "fastgd" | "reference" | "peer"
       "seconds",                 # median seconds per step; for "stream": the time floor of
                                  # this rule's traffic at the measured bandwidth
       "bytes_per_element",       # memory traffic of one step (float64: twice float32)
       "gbps",                    # bytes_per_element * elements / seconds / 1e9
       "bandwidth_gbps",          # the stream kernel of this rule's pattern, same rounds
       "fraction_of_bandwidth",   # gbps / bandwidth_gbps; null when the data fit in the L3 cache
       "speedup_vs_numpy",        # reference seconds / seconds (null without a reference row)
       "speedup_vs_best_peer",    # fastest peer's seconds / seconds (null without peers)
       "speedup_vs_torch_fused",  # torch fused's seconds / seconds (null without that row)
       "estimated",               # true: timed on a subsample and scaled (quick-mode reference)
       "note"}                    # null or a short remark
    ],
    "skipped": [{"rule", "size", "backend", "reason"}]
  }
"""
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import sys
from dataclasses import dataclass

import numpy as np

import fastgd
from . import backends as _backends
from .rules import RULES
from .timing import round_robin

SCHEMA = "fastgd-bench/1"
FASTGD_BACKENDS = ("cython", "numba", "numpy")
PEERS = ("torch-fused", "torch-foreach", "deepspeed")
# What --backends accepts: "torch" selects both torch rows.
BACKEND_CHOICES = FASTGD_BACKENDS + ("torch", "deepspeed")
DEFAULT_SIZES = "1e3,16e6,many"
QUICK_SIZES = "1e3,4e6"
STREAM_ELEMENTS = 16_000_000          # float32 elements per stream array: 64 MiB, > 2x a 32 MiB L3
STREAM_MAX_WRITTEN = 5               # kernels/stream.pyx MAX_WRITTEN
REFERENCE_SUBSAMPLE = 1_000_000       # quick mode times the NumPy reference on this many elements


class UsageError(ValueError):
    """A bad argument: the CLI prints the message and exits with status 2."""


# --- sizes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    label: str        # "1,000", "16,000,000", "1,000x1,000"
    elements: int     # total elements
    tensors: int = 1  # parameter arrays (elements // tensors each)

    @property
    def per_tensor(self):
        return self.elements // self.tensors


def _count(text, what):
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number like 1000 or 16e6; got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise UsageError(f"{what} must be a positive whole number; got {text!r}")
    return int(value)


def parse_sizes(text):
    """'1e3,16e6,many,100x5000' -> [Size]; many = 1,000 tensors of 1,000 elements."""
    out = []
    for tok in [t.strip().lower() for t in str(text).split(",") if t.strip()]:
        if tok == "many":
            tok = "1000x1000"
        if "x" in tok:
            a, _, b = tok.partition("x")
            k, n = _count(a, "tensor count"), _count(b, "tensor size")
            out.append(Size(f"{k:,}x{n:,}", k * n, k))
        else:
            n = _count(tok, "size")
            out.append(Size(f"{n:,}", n))
    if not out:
        raise UsageError("--sizes needs at least one size")
    return out


def parse_rules(text):
    if text is None or str(text).strip().lower() in ("", "all"):
        return list(RULES)
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise UsageError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    return list(dict.fromkeys(names))


def parse_threads(text):
    out = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if not tok:
            continue
        if not tok.isdigit() or int(tok) < 1:
            raise UsageError(f"--threads takes positive integers like 1,2; got {tok!r}")
        n = int(tok)
        if n > (os.cpu_count() or 1):
            raise UsageError(f"--threads {n}: this machine has {os.cpu_count()} cores")
        out.append(n)
    if not out:
        raise UsageError("--threads needs at least one thread count")
    return list(dict.fromkeys(out))


def default_threads():
    return sorted({1, os.cpu_count() or 1})


# --- environment ---------------------------------------------------------------------------------

def _version(module):
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed, or installed without metadata
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_bytes():
    """Size of the last-level cache in bytes (None where unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        for idx in sorted(os.listdir(base)):
            path = os.path.join(base, idx)
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "size")) as f:
                size = f.read().strip().upper()
            m = re.fullmatch(r"(\d+)([KMG]?)", size)
            if m:
                value = int(m.group(1)) * {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[m.group(2)]
                if best is None or level >= best[0]:
                    best = (level, value)
    except (OSError, ValueError):
        pass
    return best[1] if best else None


SIMD_SHOWN = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16",
              "avx512_fp16", "amx_tile", "neon", "asimd", "sve")


def simd_flags():
    flags = _backends.cpu_simd_flags()
    return [f for f in SIMD_SHOWN if f in flags]


def numba_threading_layer():
    """The layer Numba's parallel kernels run on (runs a tiny parallel kernel to find out)."""
    try:
        import numba
    except ImportError:
        return None
    try:
        return numba.threading_layer()
    except ValueError:
        pass
    # Load a parallel Numba kernel from its on-disk cache: one step of the first rule on an
    # array long enough for the parallel variant.
    try:
        from ._numba._compile import PARALLEL_MIN
        rule = next(iter(RULES.values()))
        opt = make_optimizer(rule, [np.ones(PARALLEL_MIN, np.float32)])
        with fastgd.use_backend("numba"):
            opt.step([np.full(PARALLEL_MIN, 1e-3, np.float32)])
    except Exception as exc:  # report, don't fail, an info command
        return f"unknown ({type(exc).__name__}: {exc})"
    try:
        return numba.threading_layer()
    except ValueError:
        return f"unknown (requested: {numba.config.THREADING_LAYER})"


def openmp_version():
    try:
        return _backends.kernel("openmp_version", "cython")()
    except Exception:  # cython backend unusable: no OpenMP to report
        return None


def peer_status():
    """{'torch': None | reason absent, 'deepspeed': None | reason absent}."""
    out = {}
    if importlib.util.find_spec("torch") is None:
        out["torch"] = "torch is not installed (pip install fastgd[torch])"
    else:
        out["torch"] = None
    out["deepspeed"] = deepspeed_status()
    return out


def deepspeed_status():
    """None when DeepSpeed's CPU optimizers can be used here, else why not."""
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (optional peer: pip install deepspeed ninja)"
    if importlib.util.find_spec("torch") is None:
        return "deepspeed needs torch, which is not installed"
    if importlib.util.find_spec("ninja") is None:
        return "deepspeed is installed but ninja is not: it cannot JIT-build its CPU kernels (pip install ninja)"
    return None


def environment():
    info = _backends.build_info()
    return {
        "fastgd": fastgd.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": _version("torch"),
        "deepspeed": _version("deepspeed"),
        "cpu": cpu_model(),
        "simd": simd_flags(),
        "cores": os.cpu_count(),
        "l3_bytes": l3_bytes(),
        "numba_threading_layer": numba_threading_layer(),
        "openmp_version": openmp_version(),
        "build": info,
        "peers": peer_status(),
    }


# --- data ----------------------------------------------------------------------------------------

_POOL = {}


def _random(n, dtype, seed):
    """n random numbers (never zeros), from a cached pool so setting up 16M-element cases is cheap."""
    key = (np.dtype(dtype).str, seed)
    pool = _POOL.get(key)
    if pool is None or pool.size < n:
        rng = np.random.default_rng(seed)
        pool = _POOL[key] = rng.standard_normal(max(n, 1 << 20)).astype(dtype)
    return pool[:n].copy()


def release_pool():
    _POOL.clear()


def _many_layout(arrays, dtype):
    """Params and grads for the "many tensors" size: FlatParams' one buffer when it exists.

    Returns (params, grads, layout). With fastgd.FlatParams the optimizer steps its contiguous
    buffer in one pass (that is what FlatParams is for); without it, a list of separate arrays.
    """
    flat_cls = getattr(fastgd, "FlatParams", None)
    total = sum(a.size for a in arrays)
    if flat_cls is not None:
        try:
            fp = flat_cls(arrays)
            def flat_attr(names):
                for attr in names:
                    cand = getattr(fp, attr, None)
                    if isinstance(cand, np.ndarray) and cand.size == total:
                        return cand
                return None
            buf = flat_attr(("flat", "buffer", "data", "param", "flat_param", "params_flat"))
            if buf is not None:
                grad = flat_attr(("grad", "flat_grad", "grad_buffer", "grads_flat"))
                if grad is None or np.may_share_memory(grad, buf):
                    grad = np.empty_like(buf)
                grad[...] = _random(total, dtype, 1).reshape(buf.shape)
                return [buf], [grad], "FlatParams"
            note = "FlatParams exposes no flat buffer attribute this benchmark knows"
        except Exception as exc:  # an API this code does not know: fall back, and say so
            note = f"FlatParams({len(arrays)} arrays) failed: {type(exc).__name__}: {exc}"
        return arrays, [_random(a.size, dtype, 1) for a in arrays], f"list ({note})"
    return arrays, [_random(a.size, dtype, 1).reshape(a.shape) for a in arrays], "list"


def make_arrays(size, dtype, flat=True):
    """(params, grads, layout) for a Size; ``flat=False``: peers get the separate tensors."""
    if size.tensors == 1:
        return [_random(size.elements, dtype, 0)], [_random(size.elements, dtype, 1)], "array"
    per = size.per_tensor
    pool = _random(size.elements, dtype, 0)
    arrays = [pool[i * per:(i + 1) * per].copy() for i in range(size.tensors)]
    if not flat:
        return arrays, [_random(a.size, dtype, 1) for a in arrays], "list"
    return _many_layout(arrays, dtype)


def make_optimizer(rule, params):
    """``rule.make(params)``; rules whose optimizer has no default lr get one."""
    try:
        return rule.make(params)
    except TypeError as exc:
        if "lr" not in str(exc):
            raise
        return rule.make(params, lr=1e-3)


# --- cases ---------------------------------------------------------------------------------------

class Skip(Exception):
    """This case cannot run here; the message says why."""


def _fastgd_case(rule, backend, size, dtype):
    ok, why = _backends.backend_status()[backend]
    if not ok:
        raise Skip(f"backend {backend} is unusable: {why}")
    params, grads, layout = make_arrays(size, dtype)
    opt = make_optimizer(rule, params)
    state = _backends._state

    def step():
        # Switch the active backend without the checks of set_backend: they would cost more
        # than a step of 1,000 elements. run_bench restores the user's backend afterwards.
        state["active"] = backend
        opt.step(grads)
    return step, layout


def _torch_case(rule, mode, size, dtype):
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install fastgd[torch])") from None
    if rule.torch is None:
        raise Skip("torch.optim has no such optimizer")
    if mode == "fused" and not rule.torch_fused:
        raise Skip("torch has no fused CPU kernel for it")
    cls = getattr(torch.optim, rule.torch, None)
    if cls is None:
        raise Skip(f"torch.optim has no {rule.torch}")
    params, grads, layout = make_arrays(size, dtype, flat=False)
    tensors = []
    for p, g in zip(params, grads):
        t = torch.from_numpy(p).requires_grad_()
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    options = dict(rule.options)
    # fastgd's fused clipping has no torch.optim option: torch's way is a separate pass,
    # clip_grad_norm_(foreach=True), before the step; that pair is the peer.
    max_norm = options.pop("max_grad_norm", None)
    try:
        opt = cls(tensors, **options, **{mode: True})
        opt.step()
    except Exception as exc:  # torch refuses this variant/dtype: a skipped row, with torch's words
        raise Skip(f"torch.optim.{rule.torch}({mode}=True): {type(exc).__name__}: {str(exc)[:120]}") from None
    if max_norm is None:
        return opt.step, layout

    def clip_and_step():
        torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=True)
        opt.step()
    return clip_and_step, layout


# DeepSpeed's CPU optimizers, by the torch.optim class they stand in for, with the options of
# that class they implement (a rule using any other option has no DeepSpeed row).
_DEEPSPEED = {
    "Adam": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": False},
             {"lr", "betas", "eps", "weight_decay"}),
    "AdamW": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": True},
              {"lr", "betas", "eps", "weight_decay"}),
    "Adagrad": ("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", {}, {"lr", "eps", "weight_decay"}),
}


def _deepspeed_optimizer(rule):
    """(class, extra kwargs) of DeepSpeed's peer of ``rule``, or raise Skip."""
    why = deepspeed_status()
    if why:
        raise Skip(why)
    entry = _DEEPSPEED.get(rule.torch)
    if entry is None:
        raise Skip("DeepSpeed has no CPU kernel for this rule")
    module, name, extra, supported = entry
    options = dict(rule.options)
    if options.pop("decoupled_weight_decay", False):
        extra = {**extra, "adamw_mode": True}
    unsupported = sorted(k for k, v in options.items() if k not in supported and v)
    if unsupported:
        raise Skip(f"DeepSpeed {name} has no {', '.join(unsupported)}")
    # Without an accelerator named, DeepSpeed logs a warning to stdout while it probes for GPUs.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as exc:  # a broken deepspeed install: a skipped row, with the reason
        raise Skip(f"cannot import {module}.{name}: {type(exc).__name__}: {exc}") from None
    return cls, {**extra, **options}


def _deepspeed_case(rule, size, dtype):
    if np.dtype(dtype) != np.float32:
        raise Skip("DeepSpeed's CPU optimizers step float32 parameters only")
    cls, kwargs = _deepspeed_optimizer(rule)
    import torch
    params, grads, layout = make_arrays(size, dtype, flat=False)
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(p))
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    try:
        opt = cls(tensors, **kwargs)   # JIT-builds the C++ on first use (minutes), cached after
        opt.step()
    except Exception as exc:  # the JIT build failed, or a variant DeepSpeed refuses
        raise Skip(f"DeepSpeed {cls.__name__}: {type(exc).__name__}: {str(exc)[:160]}") from None
    return opt.step, layout


def make_case(rule, backend, size, dtype):
    """(callable, layout) of one optimizer step; raises Skip with the reason it cannot run."""
    if backend in FASTGD_BACKENDS:
        return _fastgd_case(rule, backend, size, dtype)
    if backend in ("torch-fused", "torch-foreach"):
        return _torch_case(rule, backend.split("-")[1], size, dtype)
    if backend == "deepspeed":
        return _deepspeed_case(rule, size, dtype)
    raise ValueError(f"unknown backend {backend!r}")


def bytes_per_element(rule, dtype):
    return rule.bytes_per_element * np.dtype(dtype).itemsize // 4


class Stream:
    """The Cython stream kernel over float32 arrays far larger than the cache, one per pattern."""

    def __init__(self, elements=STREAM_ELEMENTS):
        self.elements = elements
        self.kernel = _backends.kernel("stream", "cython")
        self._arrays = []

    def case(self, written, dtype):
        """(callable, elements of float32 it streams, bytes per element of the rule's dtype)."""
        # The kernel streams at most STREAM_MAX_WRITTEN read-write arrays; a rule with more is
        # measured against that pattern (its row's note says so).
        written = min(written, STREAM_MAX_WRITTEN)
        factor = np.dtype(dtype).itemsize // 4
        n = self.elements * factor            # float64 rules: the same bytes as twice the floats
        while len(self._arrays) < written + 1 or self._arrays[0].size < n:
            if self._arrays and self._arrays[0].size < n:
                self._arrays = []
            self._arrays.append(np.full(n, 1e-7, dtype=np.float32))
        read = self._arrays[0]
        ws = self._arrays[1:written + 1]
        kernel = self.kernel
        bytes_f32 = 4 * (2 * written + 1)
        return (lambda: kernel(ws, read)), n, bytes_f32


def expand_backends(names):
    """--backends names -> row backends (torch -> torch-fused, torch-foreach)."""
    out = []
    for name in names:
        out.extend(("torch-fused", "torch-foreach") if name == "torch" else (name,))
    return out


def default_backends():
    names = [b for b in FASTGD_BACKENDS if _backends.backend_status()[b][0]]
    peers = peer_status()
    if peers["torch"] is None:
        names.append("torch")
    if peers["deepspeed"] is None:
        names.append("deepspeed")
    return names


def set_threads(n):
    """One thread count for fastgd, torch and every OpenMP runtime loaded (DeepSpeed's too)."""
    fastgd.set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="openmp")
    except ImportError:
        pass


def _kind(backend):
    if backend == "numpy":
        return "reference"
    if backend in FASTGD_BACKENDS:
        return "fastgd"
    return "peer"


def run_bench(*, rules, sizes, dtype, threads, backends, rounds=7, min_seconds=0.05, quick=False,
              stream_elements=STREAM_ELEMENTS, progress=None):
    """Time every case; return (results, skipped) in the JSON schema's row format.

    ``progress(description)`` is called before each round-robin group (size x rule x threads).
    In quick mode the NumPy reference of sizes above REFERENCE_SUBSAMPLE is timed on a
    subsample, scaled to the full size (rows marked ``estimated``), once per rule and size.
    """
    dtype = np.dtype(dtype)
    rows_backends = expand_backends(backends)
    stream = Stream(stream_elements)
    cache_bytes = l3_bytes() or 32 * 1024 ** 2
    results, skipped = [], []
    previous_backend = _backends._state["active"]
    previous_threads = _backends._threads["n"]
    previous_torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        for size in sizes:
            for name in rules:
                rule = RULES[name]
                cases, layouts = {}, {}
                estimated = {}
                for backend in rows_backends:
                    case_size = size
                    if (quick and backend == "numpy" and size.elements > REFERENCE_SUBSAMPLE):
                        tensors = min(size.tensors, REFERENCE_SUBSAMPLE // max(size.per_tensor, 1)) or 1
                        case_size = Size(size.label, max(tensors * size.per_tensor, 1), tensors) \
                            if size.tensors > 1 else Size(size.label, REFERENCE_SUBSAMPLE)
                        estimated[backend] = size.elements / case_size.elements
                    try:
                        fn, layout = make_case(rule, backend, case_size, dtype)
                        fn()   # lazy state, Numba's cache load; and a step that fails is reported
                    except Skip as why:
                        skipped.append({"rule": name, "size": size.label, "backend": backend,
                                        "reason": str(why)})
                        continue
                    except Exception as exc:  # a broken case must not end the whole run: report it
                        skipped.append({"rule": name, "size": size.label, "backend": backend,
                                        "reason": f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"})
                        continue
                    cases[backend], layouts[backend] = fn, layout
                # Reference timed once (it is single-threaded NumPy) when estimated.
                reference_once = {}
                for nthreads in threads:
                    set_threads(nthreads)
                    if progress:
                        progress(f"{name} {size.label} {dtype.name} threads={nthreads}")
                    s_fn, s_n, s_bytes = stream.case(rule.written, dtype)
                    cand = {"stream": s_fn}
                    for backend, fn in cases.items():
                        if backend in reference_once:
                            continue
                        cand[backend] = fn
                    times = round_robin(cand, rounds=rounds, min_seconds=min_seconds)
                    for backend in estimated:
                        if backend in times:
                            times[backend] *= estimated[backend]
                            reference_once[backend] = times[backend]
                        elif backend in reference_once:
                            times[backend] = reference_once[backend]
                    bw = s_bytes * s_n / times["stream"]
                    bpe = bytes_per_element(rule, dtype)
                    in_cache = size.elements * bpe <= cache_bytes
                    ref = times.get("numpy")
                    peer_times = [t for b, t in times.items() if b in PEERS]
                    best_peer = min(peer_times) if peer_times else None
                    order = ["stream"] + [b for b in rows_backends if b in times]
                    for backend in order:
                        t = times[backend]
                        if backend == "stream":
                            gbps = bw
                        else:
                            gbps = bpe * size.elements / t
                        note = None
                        if backend == "numpy" and backend in estimated:
                            note = (f"timed on {size.elements / estimated[backend]:,.0f} elements, "
                                    "scaled (quick mode)")
                        elif backend == "stream":
                            note = (f"{min(rule.written, STREAM_MAX_WRITTEN)} arrays read+written, 1 read; "
                                    f"{s_n:,} float32 elements each")
                        results.append({
                            "rule": name, "size": size.label, "elements": size.elements,
                            "tensors": size.tensors,
                            "layout": "stream" if backend == "stream" else layouts[backend],
                            "dtype": dtype.name, "threads": nthreads, "backend": backend,
                            "kind": "stream" if backend == "stream" else _kind(backend),
                            "seconds": t if backend != "stream" else t * bpe * size.elements / (s_bytes * s_n),
                            "bytes_per_element": bpe,
                            "gbps": gbps / 1e9,
                            "bandwidth_gbps": bw / 1e9,
                            "fraction_of_bandwidth": None if in_cache else gbps / bw,
                            "speedup_vs_numpy": (ref / t) if (ref and backend != "stream") else None,
                            "speedup_vs_best_peer": (best_peer / t) if (best_peer and backend != "stream") else None,
                            "speedup_vs_torch_fused": (times["torch-fused"] / t)
                            if ("torch-fused" in times and backend != "stream") else None,
                            "estimated": backend in estimated,
                            "note": note,
                        })
                cases.clear()
                gc.collect()
    finally:
        _backends._state["active"] = previous_backend
        fastgd.set_num_threads(previous_threads or os.cpu_count() or 1)
        _backends._threads["n"] = previous_threads
        if previous_torch_threads is not None:
            sys.modules["torch"].set_num_threads(previous_torch_threads)
        release_pool()
    return results, skipped


def load_json(path):
    """A bench JSON file, checked against the schema name (UsageError if it is not one)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
        raise UsageError(f"{path} is not a `fastgd bench --json` file (schema {SCHEMA})")
    return data


# --- verify --------------------------------------------------------------------------------------

VERIFY_LENGTHS = (7, 1023, 100_003)
VERIFY_STEPS = 8
# Agreement of a compiled backend with the reference after a few steps: a few ulps per step
# (the kernels may fuse a*b+c into one rounding). An isolated element may tie (sign, max) and
# go the other way: at most one element in 100,000 may differ beyond the tolerance.
VERIFY_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
VERIFY_ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}


def _verify_run(rule, backend, n, dtype, steps, seed):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    opt = make_optimizer(rule, [param])
    with fastgd.use_backend(backend):
        for g in grads:
            opt.step([g])
    out = {"param": param}
    for key, value in sorted(opt.state.get(0, {}).items()):
        if isinstance(value, np.ndarray):
            out[key] = value
    return out


def verify_one(rule, backend, dtype, lengths=VERIFY_LENGTHS, steps=VERIFY_STEPS, seed=0):
    """(ok, worst error in units of the tolerance, message) of ``backend`` against the reference.

    The error of an element is |actual - reference| / (atol + rtol * |reference|): <= 1 agrees.
    """
    dtype = np.dtype(dtype)
    rtol, atol = VERIFY_RTOL[dtype], VERIFY_ATOL[dtype]
    worst = 0.0
    for n in lengths:
        try:
            expected = _verify_run(rule, "numpy", n, dtype, steps, seed + n)
            actual = _verify_run(rule, backend, n, dtype, steps, seed + n)
        except Exception as exc:  # a crashing kernel is a failure to report, not a crash of verify
            return False, math.inf, f"n={n}: {type(exc).__name__}: {exc}"
        for key, want in expected.items():
            got = actual.get(key)
            if got is None:
                return False, math.inf, f"n={n}: state {key!r} missing"
            want64, got64 = want.astype(np.float64), got.astype(np.float64)
            with np.errstate(all="ignore"):
                err = np.abs(got64 - want64) / (atol + rtol * np.abs(want64))
            both_nan = np.isnan(want64) & np.isnan(got64)
            err[both_nan] = 0.0
            err[np.isnan(err)] = np.inf   # NaN on one side only, or inf - inf
            bad = int(np.count_nonzero(err > 1))
            if bad > n // 100_000:
                i = int(np.argmax(err))
                return False, float(err.max()), (
                    f"n={n}: {key} differs at {bad} of {n} elements (worst at [{i}]: "
                    f"{got[i]!r}, reference {want[i]!r})")
            ok_err = err[err <= 1]
            if ok_err.size:
                worst = max(worst, float(ok_err.max()))
    return True, worst, ""
