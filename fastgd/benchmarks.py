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


``run_bench`` times, for each size, rule and thread count, two stream kernels of the rule's
pattern and every case round-robin (fastgd.timing), so the bandwidth each row is divided by was
measured in the same rounds as the row:

  the big stream    arrays of max(``stream_elements``, CACHE_FACTOR x the row's elements): the
                    memory bandwidth the rows are divided by (``fraction_of_bandwidth``)
  the cache probe   arrays of the row's size (at least min(CACHE_PROBE_MIN, big / CACHE_FACTOR)
                    elements, so that the call overhead does not hide the bytes; data smaller
                    than a footprint that sits in cache sit in cache too)

The row is *in cache* when the probe streams at least CACHE_RATIO (1.3) times the big stream's
bytes per second (``cache_decision``): the data live in a cache, so a fraction of the memory
bandwidth means nothing and is null. The size the CPU reports for its L3 is not used: VMs
report sizes far from what they get. Presets (``fastgd bench --preset``) are other sets of
groups in the same row format (``clip``: the norm pass, Adam and clip+Adam of every backend in
the same rounds; ``formats``: AdamW through ``adam_many`` in each storage-format recipe of
FORMAT_RECIPES, each against a ``stream_formats`` stream of its bytes, widths and roles,
``run_formats``; ``lowbit``: the same with quantized states, fastgd/lowbit_bench.py) or,
``callpath``, their own rows (``callpath_rows``).

JSON schema (``fastgd bench --json FILE``), ``"schema": "fastgd-bench/2"`` (/1 decided "in
cache" from the reported L3 size and had no cache_* fields; ``--compare`` reads both)::

  {
    "schema": "fastgd-bench/2",
    "created": "2026-11-25T13:00:00+00:00",          # UTC
    "argv": ["bench", "--quick", ...],
    "environment": {                                 # see environment()
      "fastgd", "python", "numpy", "numba", "torch", "deepspeed",   # versions (null if absent)
      "cpu", "simd": [...], "cores", "l3_bytes" (reported, informative only),
      "numba_threading_layer", "openmp_version", "build": {... build_info.json ...},
      "peers": {name: null | "why absent"}
    },
    "settings": {"preset", "rules": [...], "sizes": [{"label", "elements", "tensors"}], "dtype",
                 "threads": [...], "backends": [...], "rounds", "min_seconds", "quick",
                 "stream_elements", "cache_ratio_threshold"},
    "results": [                                     # one per measured row (presets rules, adam,
                                                     # family, clip)
      {"rule",                    # a rule of RULES, or "norm" (clip preset: the norm pass alone)
       "size", "elements", "tensors", "layout", "dtype", "threads",
       "backend",                 # "stream" | "cython" | "numba" | "numpy" | "torch-fused" | ...
                                  # (clip preset: also "cython list": the separate arrays)
       "kind",                    # "stream" | "fastgd" | "reference" | "peer"
       "seconds",                 # median seconds per step; for "stream": the time floor of
                                  # this rule's traffic at the big stream's bandwidth
       "bytes_per_element",       # memory traffic of one step (float64: twice float32)
       "gbps",                    # bytes_per_element * elements / seconds / 1e9
       "bandwidth_gbps",          # the big stream of this rule's pattern, same rounds
       "stream_elements",         # float32 elements per array of the big stream
       "cache_stream_gbps",       # the cache probe (this pattern at the row's size), same rounds
       "cache_stream_elements",   # float32 elements per array of the cache probe
       "cache_ratio",             # cache_stream_gbps / bandwidth_gbps
       "in_cache",                # cache_ratio >= settings.cache_ratio_threshold
       "fraction_of_bandwidth",   # gbps / bandwidth_gbps; null when in_cache
       "speedup_vs_numpy",        # reference seconds / seconds (null without a reference row)
       "speedup_vs_best_peer",    # fastest peer's seconds / seconds (null without peers)
       "speedup_vs_torch_fused",  # torch fused's seconds / seconds (null without that row)
       "estimated",               # true: timed on a subsample and scaled (quick-mode reference)
       "note"}                    # null or a short remark
      # preset formats: rule "adamw", backend also "<backend> adam" (the single float32 kernel,
      # recipe fp32: the before row); stream_elements / cache_stream_elements count elements
      # per array of any width; speedup_vs_torch_fused is against torch fused float32 in every
      # recipe; dtype is "float32" (the arithmetic: "formats" gives each array's storage); and
      #  "recipe"                       FORMAT_RECIPES name: fp32, bf16, bf16+fp32-states, ...
      #  "formats"                      {"param", "grad", "exp_avg", "exp_avg_sq"[, "out"]: format}
      #  "speedup_vs_torch_fused_bf16"  torch fused AdamW on bfloat16 params/grads/states
      #  "deepspeed_recipe"             the recipe of the DeepSpeed row compared with (or null)
      #  "speedup_vs_deepspeed"         that DeepSpeedCPUAdam row's seconds / seconds
      #  "speedup_vs_before"            fastgd rows: the backend's single fp32 kernel / seconds
      # preset lowbit: the same (recipes lowbit_bench.LOWBIT_RECIPES, backends also bnb-8bit,
      # bnb-32bit, torchao-8bit, torchao-4bit; bytes_per_element counts the absmax: 16.0625),
      # no speedup_vs_torch_fused_bf16 / deepspeed / before; and
      #  "speedup_vs_bnb8", "speedup_vs_torchao8"   bitsandbytes / torchao AdamW8bit / seconds
      #  "speedup_vs_fp32"              fastgd rows: the backend's fp32 adam_many / seconds
    ],
    # preset callpath instead: one row per call path (callpath_rows)
    #  {"case", "backend", "threads", "elements", "tensors", "seconds" (per call),
    #   "seconds_per_tensor", "vs_np_add" (seconds_per_tensor / np.add's seconds),
    #   "vs_torch_fused" (seconds / torch.optim.AdamW(fused=True)'s; torch rows only)}
    "skipped": [{"rule", "size", "backend", "reason"}],
    # preset formats only: issue 14's targets (FORMAT_TARGETS), one per fastgd adam_many row
    # (preset lowbit: issue 15's, lowbit_bench.LOWBIT_TARGETS)
    "targets": [{"target", "recipe", "field", "size", "threads", "backend", "value", "least",
                 "met" (null: not measured), "why_not_measured"}],
    # preset lowbit only: state bytes per parameter of each optimizer (lowbit_bench.state_memory)
    "memory": [{"size", "elements", "optimizer", "recipe", "state_bytes", "bytes_per_param",
                "vs_float32", "shared_bytes", "counted", "most", "met"}]
  }
"""
import functools
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
from . import formats as _formats
from .rules import RULES
from .timing import round_robin

SCHEMA = "fastgd-bench/2"
READABLE_SCHEMAS = ("fastgd-bench/1", SCHEMA)   # what --compare reads
FASTGD_BACKENDS = ("cython", "numba", "numpy")
PEERS = ("torch-fused", "torch-foreach", "deepspeed")
# What --backends accepts: "torch" selects both torch rows.
BACKEND_CHOICES = FASTGD_BACKENDS + ("torch", "deepspeed")
DEFAULT_SIZES = "1e3,16e6,many"
QUICK_SIZES = "1e3,4e6"
STREAM_ELEMENTS = 16_000_000          # least float32 elements per big stream array (64 MiB)
CACHE_FACTOR = 4                      # the big stream has at least 4x the row's elements
CACHE_PROBE_MIN = 262_144             # least elements of the cache probe (1 MiB per float32 array)
CACHE_RATIO = 1.3                     # probe / big stream bandwidth from which a row is "in cache"
STREAM_MAX_WRITTEN = 5               # kernels/stream.pyx MAX_WRITTEN
REFERENCE_SUBSAMPLE = 1_000_000       # quick mode times the NumPy reference on this many elements

# ``fastgd bench --preset NAME``: what each measures and its defaults (explicit options win).
# adam, family and clip replace bench/adam_roofline.py, family_roofline.py and clip_roofline.py.
PRESETS = {
    "rules": {"about": "every rule (--rules) on every backend, each size against its stream",
              "sizes": DEFAULT_SIZES, "quick_sizes": QUICK_SIZES},
    "adam": {"about": "the rules table of Adam alone at 16M",
             "rules": "adam", "sizes": "16e6", "quick_sizes": "4e6"},
    "family": {"about": "the rules table of every rule at 16M",
               "rules": "all", "sizes": "16e6", "quick_sizes": "4e6"},
    "clip": {"about": "norm pass alone, Adam, clip+Adam fused vs torch clip_grad_norm_ + fused Adam, "
                      "all backends in the same rounds",
             "sizes": "16e6,many", "quick_sizes": "4e6,many", "rounds": 9},
    "callpath": {"about": "microseconds per call on 1,000 float32: opt.step, functional.adam_, the raw "
                          "kernel, np.add; fastgd.torch.AdamW vs torch fused on 150 tensors (the same "
                          "gradients, and new gradient tensors every step)"},
    "formats": {"about": "issue 14: AdamW through adam_many in every storage-format recipe (fp32, bf16, "
                         "bf16+fp32 states, fp32+bf16 states, fp16, fp16+fp32 states, master weights, bf16 "
                         "stochastic rounding) vs the single fp32 kernel, torch fused and DeepSpeed in "
                         "their formats, and a stream of each recipe's bytes; the targets of the issue",
                "rules": "adamw", "sizes": "16e6", "quick_sizes": "4e6"},
    "lowbit": {"about": "issue 15: AdamW with 8-bit and 4-bit states through adam_many (f32 or bf16 params) vs "
                        "torch fused fp32, bitsandbytes AdamW8bit/AdamW and torchao AdamW8bit/AdamW4bit, a stream "
                        "of each recipe's bytes, the state memory per parameter; the targets of the issue "
                        "(fastgd/lowbit_bench.py)",
               "rules": "adamw", "sizes": "16e6,64e6", "quick_sizes": "4e6"},
}


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


# --- in cache or not: measured ---------------------------------------------------------------------

def stream_sizes(elements, stream_elements=STREAM_ELEMENTS):
    """(cache probe, big stream) float32 elements per array for a row of ``elements``.

    The big stream has at least CACHE_FACTOR times the row's elements (and ``stream_elements``);
    the probe has the row's, but at least min(CACHE_PROBE_MIN, big / CACHE_FACTOR): below that
    the call overhead of the stream kernel would hide how fast the bytes move.
    """
    big = max(stream_elements, CACHE_FACTOR * elements)
    return max(elements, min(CACHE_PROBE_MIN, big // CACHE_FACTOR)), big


def cache_decision(probe_gbps, big_gbps, threshold=CACHE_RATIO):
    """(ratio, in_cache) of a row whose pattern streams at ``probe_gbps`` at the row's size and
    at ``big_gbps`` over arrays several times larger: in cache when ratio >= ``threshold``.

    Beyond the cache both streams move the same memory and the ratio is near 1 (on a shared
    2-core VM, 0.6-1.22 was seen: a busy moment can slow either); from the cache it is well
    above (1.5-3x on common CPUs: 1.7 on that VM, 1.6 on the one of issue 13). 1.3 sits
    between: a row at the edge of the cache, only slightly faster, is treated as beyond it and
    gets a fraction of the bandwidth.
    """
    if not (probe_gbps > 0 and big_gbps > 0):
        raise ValueError(f"bandwidths must be positive; got {probe_gbps!r}, {big_gbps!r}")
    ratio = probe_gbps / big_gbps
    return ratio, ratio >= threshold


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
        opt = rule.make([np.ones(PARALLEL_MIN, np.float32)])
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


def make_arrays(size, dtype, flat=True):
    """(params, grads, layout) for a Size.

    Many tensors: with ``flat`` one ``fastgd.FlatParams`` (params) stepped with its own gradient
    buffer (grads None: ``opt.step()`` reads ``flat.grad``), that is what FlatParams is for;
    without, the separate arrays (what the peers step).
    """
    if size.tensors == 1:
        return [_random(size.elements, dtype, 0)], [_random(size.elements, dtype, 1)], "array"
    per = size.per_tensor
    pool = _random(size.elements, dtype, 0)
    arrays = [pool[i * per:(i + 1) * per].copy() for i in range(size.tensors)]
    if not flat:
        return arrays, [_random(a.size, dtype, 1) for a in arrays], "list"
    fp = fastgd.FlatParams(arrays)
    fp.grad[...] = _random(fp.size, dtype, 1)
    return fp, None, "FlatParams"


# --- cases ---------------------------------------------------------------------------------------

class Skip(Exception):
    """This case cannot run here; the message says why."""


def _fastgd_case(rule, backend, size, dtype, flat=True):
    """A step on whichever backend is active: the caller activates ``backend`` (Entry.uses)."""
    ok, why = _backends.backend_status()[backend]
    if not ok:
        raise Skip(f"backend {backend} is unusable: {why}")
    params, grads, layout = make_arrays(size, dtype, flat)
    opt = rule.make(params)
    return (lambda: opt.step(grads)), layout


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
    """(callable, layout) of one optimizer step; raises Skip with the reason it cannot run.

    A fastgd case steps on the active backend: activate ``backend`` (fastgd.use_backend /
    set_backend) around calls to it."""
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
    """The Cython stream kernel over float32 arrays, one pool of arrays per length."""

    def __init__(self, elements=STREAM_ELEMENTS):
        self.elements = elements          # the default length (the least big stream)
        self.kernel = _backends.kernel("stream", "cython")
        self._pools = {}

    def case(self, written, dtype, elements=None):
        """(callable, float32 elements per array, bytes per float32 element) of the pattern of a
        ``dtype`` rule that reads and writes ``written`` arrays and reads one, over ``elements``.

        The kernel streams at most STREAM_MAX_WRITTEN read-write arrays; a rule with more is
        measured against that pattern. float64: the same bytes as twice the float32 elements.
        """
        written = min(written, STREAM_MAX_WRITTEN)
        n = (elements or self.elements) * (np.dtype(dtype).itemsize // 4)
        pool = self._pools.setdefault(n, [])
        while len(pool) < written + 1:
            pool.append(np.full(n, 1e-7, dtype=np.float32))
        read, ws, kernel = pool[0], pool[1:written + 1], self.kernel
        return (lambda: kernel(ws, read)), n, 4 * (2 * written + 1)

    def case_formats(self, pattern, elements=None):
        """(callable, elements per array, bytes per element) of stream_formats over ``pattern``
        ((read-write widths), (read widths), (write-only widths)), in bytes of each array's
        elements (4: float32, 2: 16-bit; read-write only, the quantized states' arrays: 1 8-bit
        codes, 0.5 packed 4-bit codes, below 0.5 an absmax, a float32 per 4 / width elements),
        arrays of ``elements``: the bytes of a row whose arrays have those formats and roles
        (Group.pattern)."""
        rw, read, out = pattern
        n = elements or self.elements
        kernel = _backends.kernel("stream_formats", "cython")
        taken = {}

        def make(width):
            # 1e-7 in every element (16-bit: its bfloat16 bits), never zeros nor subnormals
            if width == 4:
                return np.full(n, 1e-7, dtype=np.float32)
            if width == 2:
                return np.full(n, np.float32(1e-7).view(np.uint32) >> 16, dtype=np.uint16)
            if width in (1, 0.5):      # codes: a byte per element, or per two
                return np.full(n if width == 1 else (n + 1) // 2, 0x33, dtype=np.uint8)
            return np.full(-(-n // round(4 / width)), 1e-7, dtype=np.float32)   # an absmax per block

        def take(width):
            # distinct arrays per role: the pool of this length and width grows as needed
            pool = self._pools.setdefault((n, width), [])
            i = taken.get(width, 0)
            taken[width] = i + 1
            while len(pool) <= i:
                pool.append(make(width))
            return pool[i]
        rws, reads, outs = [take(w) for w in rw], [take(w) for w in read], [take(w) for w in out]
        return (lambda: kernel(rws, reads, outs)), n, 2 * sum(rw) + sum(read) + sum(out)

    def release(self):
        self._pools.clear()


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
    torch = sys.modules.get("torch")   # None: imported nowhere, or hidden (a test without peers)
    if torch is not None:
        torch.set_num_threads(n)
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


@dataclass
class Entry:
    """One timed row: ``fn()`` is one step; ``uses`` the fastgd backend active while it runs."""
    backend: str              # the row's backend label
    kind: str                 # "fastgd" | "reference" | "peer"
    fn: object
    layout: str
    uses: str = None          # None: a peer (no fastgd backend involved)
    scale: float = 1.0        # seconds multiplier: a subsample scaled to the row's size
    once: bool = False        # time it at the first thread count only (single-threaded NumPy)
    seconds: float = None     # set after the first timing of a ``once`` entry
    note: str = None


@dataclass
class Group:
    """The rows of one rule over one size: bytes per element, access pattern, entries.

    ``pattern`` (preset formats): the access pattern in bytes per element of each array,
    ((read-write widths), (read widths), (write-only widths)), streamed by stream_formats; None:
    ``written`` arrays of the run's dtype read and written, one read (the stream kernel).
    ``recipe``: the storage formats of the rows (preset formats; FORMAT_RECIPES)."""
    rule: str
    bpe: int
    written: int
    entries: list
    pattern: tuple = None
    recipe: object = None

    @property
    def key(self):
        return self.rule if self.recipe is None else f"{self.rule} {self.recipe.name}"

    def stream_key(self):
        return self.pattern if self.pattern is not None else min(self.written, STREAM_MAX_WRITTEN)


def _call_on(backend, fn):
    if backend is None:
        return fn()
    with fastgd.use_backend(backend):
        return fn()


def _guarded(skipped, rule, size, backend, build):
    """``build()`` -> Entry, warmed up once (lazy state, Numba's cache load, a failing step);
    None, with the reason appended to ``skipped``, when it cannot run or fails."""
    try:
        entry = build()
        _call_on(entry.uses, entry.fn)
        return entry
    except Skip as why:
        reason = str(why)
    except Exception as exc:  # a broken case must not end the whole run: report it
        reason = f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"
    skipped.append({"rule": rule, "size": size.label, "backend": backend, "reason": reason})
    return None


def _rule_entry(rule, backend, size, dtype, skipped, *, quick=False, flat=True, label=None):
    """The Entry of ``rule`` on ``backend`` at ``size`` (or None: see ``skipped``).

    In quick mode the NumPy reference of sizes above REFERENCE_SUBSAMPLE is timed on a
    subsample and scaled to the full size (rows marked ``estimated``), once for all threads.
    """
    case_size = size
    if quick and backend == "numpy" and size.elements > REFERENCE_SUBSAMPLE:
        tensors = min(size.tensors, REFERENCE_SUBSAMPLE // max(size.per_tensor, 1)) or 1
        case_size = (Size(size.label, max(tensors * size.per_tensor, 1), tensors) if size.tensors > 1
                     else Size(size.label, REFERENCE_SUBSAMPLE))
    scale = size.elements / case_size.elements

    def build():
        if backend in FASTGD_BACKENDS:
            fn, layout = _fastgd_case(rule, backend, case_size, dtype, flat)
        else:
            fn, layout = make_case(rule, backend, case_size, dtype)
        return Entry(label or backend, _kind(backend), fn, layout,
                     uses=backend if backend in FASTGD_BACKENDS else None, scale=scale,
                     once=scale != 1, note=f"timed on {case_size.elements:,} elements, scaled (quick mode)"
                     if scale != 1 else None)
    return _guarded(skipped, rule.name, size, label or backend, build)


def _entry_seconds(entry, times, key):
    if entry.seconds is not None:
        return entry.seconds
    seconds = times[key] * entry.scale
    if entry.once:
        entry.seconds = seconds
    return seconds


def _pattern_note(pattern):
    rw, read, out = pattern
    bits = lambda widths: "+".join(f"{round(8 * w)}" for w in widths if w >= 0.5)  # noqa: E731
    scales = [w for w in rw if w < 0.5]       # absmax arrays (Stream.case_formats)
    blocks = "/".join(dict.fromkeys(f"{round(4 / w)}" for w in scales))
    absmax = f", {len(scales)} absmax, a float32 per {blocks}" if scales else ""
    text = f"{len(rw)} arrays read+written ({bits(rw)}-bit{absmax}), {len(read)} read ({bits(read)}-bit)"
    return text + (f", {len(out)} written ({bits(out)}-bit)" if out else "")


def measure(groups, size, dtype, threads, stream, *, rounds, min_seconds):
    """Rows of ``groups`` over ``size``: every entry and, per access pattern, the cache probe and
    the big stream (stream_sizes), all in one round-robin; the schema's row format."""
    dtype = np.dtype(dtype)
    probe_n, big_n = stream_sizes(size.elements, stream.elements)
    cands, before, streams = {}, {}, {}
    for g in groups:
        w = g.stream_key()
        if w not in streams:
            streams[w] = {}
            for which, n in (("probe", probe_n), ("big", big_n)):
                fn, n32, b32 = (stream.case_formats(w, n) if g.pattern is not None
                                else stream.case(w, dtype, n))
                cands[("stream", which, w)] = fn
                streams[w][which] = (n32, b32)
        for e in g.entries:
            if e.seconds is None:
                cands[(g.key, e.backend)] = e.fn
                if e.uses:
                    before[(g.key, e.backend)] = functools.partial(fastgd.set_backend, e.uses)
    times = round_robin(cands, rounds=rounds, min_seconds=min_seconds, before=before)
    rows = []
    for g in groups:
        w = g.stream_key()
        bw = {which: b32 * n32 / times[("stream", which, w)] for which, (n32, b32) in streams[w].items()}
        ratio, in_cache = cache_decision(bw["probe"], bw["big"])
        seconds = {e.backend: _entry_seconds(e, times, (g.key, e.backend)) for e in g.entries}
        ref = seconds.get("numpy")
        peer_times = [seconds[e.backend] for e in g.entries if e.kind == "peer"]
        best_peer = min(peer_times) if peer_times else None
        fused = seconds.get("torch-fused")
        common = {"rule": g.rule, "size": size.label, "elements": size.elements, "tensors": size.tensors,
                  "dtype": dtype.name, "threads": threads, "bytes_per_element": g.bpe,
                  "bandwidth_gbps": bw["big"] / 1e9, "stream_elements": streams[w]["big"][0],
                  "cache_stream_gbps": bw["probe"] / 1e9, "cache_stream_elements": streams[w]["probe"][0],
                  "cache_ratio": ratio, "in_cache": in_cache}
        if g.recipe is not None:
            common.update(recipe=g.recipe.name, formats=g.recipe.formats)
        if g.pattern is not None:
            note = f"{_pattern_note(g.pattern)}; {streams[w]['big'][0]:,} elements each (cache probe: " \
                   f"{streams[w]['probe'][0]:,})"
        else:
            more = f" (the rule writes {g.written}: measured against {w})" if g.written > w else ""
            note = f"{w} arrays read+written, 1 read{more}; {streams[w]['big'][0]:,} float32 " \
                   f"elements each (cache probe: {streams[w]['probe'][0]:,})"
        rows.append({**common, "layout": "stream", "backend": "stream", "kind": "stream",
                     "seconds": g.bpe * size.elements / bw["big"], "gbps": bw["big"] / 1e9,
                     "fraction_of_bandwidth": None if in_cache else 1.0, "speedup_vs_numpy": None,
                     "speedup_vs_best_peer": None, "speedup_vs_torch_fused": None, "estimated": False,
                     "note": note})
        for e in g.entries:
            t = seconds[e.backend]
            gbps = g.bpe * size.elements / t
            rows.append({**common, "layout": e.layout, "backend": e.backend, "kind": e.kind, "seconds": t,
                         "gbps": gbps / 1e9, "fraction_of_bandwidth": None if in_cache else gbps / bw["big"],
                         "speedup_vs_numpy": ref / t if ref else None,
                         "speedup_vs_best_peer": best_peer / t if best_peer else None,
                         "speedup_vs_torch_fused": fused / t if fused else None,
                         "estimated": e.scale != 1, "note": e.note})
    return rows


def run_groups(units, *, sizes, dtype, threads, rounds=7, min_seconds=0.05, stream_elements=STREAM_ELEMENTS,
               progress=None):
    """``units(size)`` yields (label, [Group]); each is measured once per thread count.

    The user's backend and thread settings (fastgd's and torch's) are restored afterwards.
    """
    results = []
    torch = sys.modules.get("torch")
    previous_torch_threads = torch.get_num_threads() if torch else None
    stream = Stream(stream_elements)
    try:
        with fastgd.use_backend(fastgd.get_backend()), _backends.use_num_threads(fastgd.get_num_threads()):
            for size in sizes:
                for label, groups in units(size):
                    for nthreads in threads:
                        set_threads(nthreads)
                        if progress:
                            progress(f"{label} {size.label} {np.dtype(dtype).name} threads={nthreads}")
                        results += measure(groups, size, dtype, nthreads, stream, rounds=rounds,
                                           min_seconds=min_seconds)
                    del groups
                    gc.collect()
                stream.release()
    finally:
        if previous_torch_threads is not None:
            torch.set_num_threads(previous_torch_threads)
        release_pool()
    return results


def run_bench(*, rules, sizes, dtype, threads, backends, rounds=7, min_seconds=0.05, quick=False,
              stream_elements=STREAM_ELEMENTS, progress=None):
    """The rules table (presets rules, adam, family): (results, skipped) in the schema's format.

    One round-robin group per size x rule x threads; ``progress(description)`` before each.
    """
    dtype = np.dtype(dtype)
    rows_backends = expand_backends(backends)
    skipped = []

    def units(size):
        for name in rules:
            rule = RULES[name]
            entries = [_rule_entry(rule, b, size, dtype, skipped, quick=quick) for b in rows_backends]
            yield name, [Group(name, bytes_per_element(rule, dtype), rule.written, [e for e in entries if e])]
    results = run_groups(units, sizes=sizes, dtype=dtype, threads=threads, rounds=rounds,
                         min_seconds=min_seconds, stream_elements=stream_elements, progress=progress)
    return results, skipped


# --- preset clip ---------------------------------------------------------------------------------

CLIP_BACKENDS = ("cython", "numba", "torch-fused")
CLIP_RULES = ("adam", "clip_adam")


def _norm_entry(backend, size, dtype):
    """The norm pass alone (fastgd.functional.global_norm): a read-only stream of the gradient."""
    grads = [_random(size.elements, dtype, 1)]
    return Entry(backend, "fastgd", lambda: fastgd.functional.global_norm(grads),
                 "FlatParams" if size.tensors > 1 else "array", uses=backend)


def run_clip(*, sizes, dtype, threads, backends, rounds=9, min_seconds=0.05, stream_elements=STREAM_ELEMENTS,
             progress=None):
    """Preset clip: per size and thread count, in one round-robin, the norm pass alone (rule
    "norm", 4 bytes/element, against a read-only stream), Adam and clip+Adam fused (rules adam
    and clip_adam, against the Adam-pattern stream) on every compiled backend, torch fused Adam
    and clip_grad_norm_(foreach=True) + fused Adam; over many tensors also fastgd on the
    separate arrays (backend "<name> list") next to the FlatParams rows."""
    dtype = np.dtype(dtype)
    rows_backends = [b for b in expand_backends(backends) if b in CLIP_BACKENDS]
    compiled = [b for b in rows_backends if b in FASTGD_BACKENDS]
    skipped = []

    def units(size):
        norm = [_guarded(skipped, "norm", size, b, lambda b=b: _norm_entry(b, size, dtype)) for b in compiled]
        groups = [Group("norm", 4 * dtype.itemsize // 4, 0, [e for e in norm if e])]
        for name in CLIP_RULES:
            rule = RULES[name]
            entries = [_rule_entry(rule, b, size, dtype, skipped) for b in rows_backends]
            if size.tensors > 1:
                entries += [_rule_entry(rule, b, size, dtype, skipped, flat=False, label=f"{b} list")
                            for b in compiled]
            groups.append(Group(name, bytes_per_element(rule, dtype), rule.written, [e for e in entries if e]))
        yield "norm, adam, clip_adam", groups
    results = run_groups(units, sizes=sizes, dtype=dtype, threads=threads, rounds=rounds,
                         min_seconds=min_seconds, stream_elements=stream_elements, progress=progress)
    return results, skipped


# --- preset formats ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """The storage formats of AdamW's arrays in one row of preset formats (fastgd/formats.py
    codes): the param, its grad, both states (exp_avg, exp_avg_sq), and ``out``, the 16-bit
    copy of a float32 master param (NONE: none). ``deepspeed``: the recipe whose DeepSpeed row
    this one's speedup_vs_deepspeed is against (None: DeepSpeed has nothing like it)."""
    name: str
    param: int
    grad: int
    state: int
    out: int = _formats.NONE
    deepspeed: str = None

    @property
    def pattern(self):
        """(read-write widths, read widths, write-only widths) in bytes: Group.pattern."""
        size = _formats.ITEMSIZE
        return ((size[self.param], size[self.state], size[self.state]), (size[self.grad],),
                (size[self.out],) if self.out != _formats.NONE else ())

    @property
    def bytes_per_element(self):
        rw, read, out = self.pattern
        return 2 * sum(rw) + sum(read) + sum(out)

    @property
    def formats(self):
        """{role: format name} as the rows show it (bfloat16-sr: stochastic rounding)."""
        def name(code):
            return "bfloat16-sr" if code == _formats.BF16_SR else _formats.NAMES[code]
        out = {"param": name(self.param), "grad": name(self.grad), "exp_avg": name(self.state),
               "exp_avg_sq": name(self.state)}
        if self.out != _formats.NONE:
            out["out"] = name(self.out)
        return out


_F = _formats
# Issue 14's recipes, in its table's order; bytes per element: 28, 14, 22, 20, 14, 22, 28, 14.
FORMAT_RECIPES = (
    Recipe("fp32", _F.F32, _F.F32, _F.F32, deepspeed="fp32"),
    Recipe("bf16", _F.BF16, _F.BF16, _F.BF16, deepspeed="bf16"),
    Recipe("bf16+fp32-states", _F.BF16, _F.BF16, _F.F32, deepspeed="bf16+fp32-states"),
    Recipe("fp32+bf16-states", _F.F32, _F.F32, _F.BF16),
    Recipe("fp16", _F.F16, _F.F16, _F.F16, deepspeed="fp16"),
    Recipe("fp16+fp32-states", _F.F16, _F.F16, _F.F32, deepspeed="fp16+fp32-states"),
    # float32 master param read+written, bf16 grad in, bf16 copy out, float32 states: 28 bytes;
    # DeepSpeed's offload steps the float32 master with float32 grads (its fp32 row, 28 bytes too)
    Recipe("master", _F.F32, _F.BF16, _F.F32, out=_F.BF16, deepspeed="fp32"),
    # bf16_stochastic_round: the bf16 param and states stored with stochastic rounding
    Recipe("bf16-sr", _F.BF16_SR, _F.BF16, _F.BF16_SR, deepspeed="bf16"),
)
FORMATS_RULE = "adamw"
FORMATS_STEP = 10                      # the step count of every call (its bias corrections)
FORMATS_BACKENDS = ("cython", "numba", "torch-fused", "deepspeed")
BEFORE = " adam"                       # "cython adam": the single float32 kernel, the "before" row
# The targets of issue 14, per fastgd backend and thread count: (recipe or None for every one,
# row field, least value, what it says).
FORMAT_TARGETS = (
    ("bf16", "speedup_vs_torch_fused", 1.6, "bf16 >= 1.6x torch fused fp32"),
    ("bf16", "speedup_vs_torch_fused_bf16", 2.0, "bf16 >= 2.0x torch fused bf16"),
    ("bf16", "speedup_vs_deepspeed", 1.25, "bf16 >= 1.25x DeepSpeed bf16 params+states"),
    ("bf16+fp32-states", "speedup_vs_deepspeed", 1.1, "bf16+fp32-states >= 1.1x DeepSpeed's same"),
    ("fp32", "speedup_vs_before", 1.0, "fp32 adam_many no slower than the single adam kernel"),
    (None, "fraction_of_bandwidth", 0.85, "{recipe} >= 0.85 of its stream"),
)


def _np_dtype(code):
    if code in (_F.BF16, _F.BF16_SR):
        if _F.bfloat16 is None:
            raise Skip("ml_dtypes is not installed (bfloat16 arrays)")
        return _F.bfloat16
    return {_F.F32: np.dtype(np.float32), _F.F16: np.dtype(np.float16)}[code]


def _formats_options():
    """AdamW's checked options and its kernel scalars at step FORMATS_STEP."""
    rule = RULES[FORMATS_RULE]
    cls = rule._cls()
    spec = rule.spec
    o = spec.check_options({**spec.defaults, **cls.fixed, **cls.overrides, **rule.options})
    return o, tuple(spec.constants(o)) + tuple(spec.scalars(o, FORMATS_STEP, {}, False))


def _format_arrays(recipe, size):
    """[{role: array}] per tensor of ``size``: random data (never zeros; exp_avg_sq positive)
    in each role's format."""
    code = {"param": recipe.param, "grad": recipe.grad, "exp_avg": recipe.state, "exp_avg_sq": recipe.state}
    if recipe.out != _F.NONE:
        code["out"] = recipe.out
    whole = {"param": _random(size.elements, np.float32, 0), "grad": _random(size.elements, np.float32, 1),
             "exp_avg": 0.1 * _random(size.elements, np.float32, 2),
             "exp_avg_sq": 0.01 * np.abs(_random(size.elements, np.float32, 3)) + 1e-6}
    whole["out"] = whole["param"]
    stored = {}
    for role, c in code.items():
        dt = _np_dtype(c)
        stored[role] = whole[role] if dt == np.float32 else whole[role].astype(dt)
    per = size.per_tensor
    return [{role: a[k * per:(k + 1) * per].copy() for role, a in stored.items()} for k in range(size.tensors)]


def _many_case(recipe, backend, tensors):
    """One adam_many call over ``tensors`` (their arrays in ``recipe``'s formats)."""
    ok, why = _backends.backend_status()[backend]
    if not ok:
        raise Skip(f"backend {backend} is unusable: {why}")
    try:
        kernel = _backends.kernel(f"{RULES[FORMATS_RULE].spec.name}_many", backend)
    except NotImplementedError:
        raise Skip(f"backend {backend} has no adam_many kernel (yet)") from None
    o, scalars = _formats_options()
    spec = RULES[FORMATS_RULE].spec
    code = {"param": recipe.param, "grad": recipe.grad, "exp_avg": recipe.state, "exp_avg_sq": recipe.state}
    rows, fmts = [], None
    for arrays in tensors:
        states = spec.arrays(arrays)           # the kernel's order; an unused one is another's stand-in
        role_of = {id(arrays[r]): r for r in ("exp_avg", "exp_avg_sq")}
        out = arrays.get("out")
        # grad_acc is unused (use_acc False): the grad stands in for it, in the grad's format
        table = [arrays["param"], arrays["grad"], arrays["grad"], *states]
        rows.append([a.ctypes.data for a in table] + [out.ctypes.data if out is not None else 0])
        fmts = [recipe.param, recipe.grad, recipe.grad] + [code[role_of[id(a)]] for a in states] + [
            recipe.out if out is not None else _F.NONE]
    ptrs = np.ascontiguousarray(rows, dtype=np.int64)
    offsets = np.zeros(len(tensors) + 1, np.int64)
    offsets[1:] = np.cumsum([t["param"].size for t in tensors])
    fmts = np.asarray(fmts, np.int32)
    keys = np.asarray([_F.sr_key(0, FORMATS_STEP, k) for k in range(len(tensors))], np.uint32)
    keep = tensors                             # the arrays live as long as the case

    def step():
        kernel(ptrs, offsets, fmts, keys, 1.0, False, False, *scalars)
        return keep
    return step


def _before_case(backend, tensors):
    """The single float32 kernel (adam), once per tensor: the step before adam_many."""
    ok, why = _backends.backend_status()[backend]
    if not ok:
        raise Skip(f"backend {backend} is unusable: {why}")
    kernel = _backends.kernel(RULES[FORMATS_RULE].spec.name, backend)
    _, scalars = _formats_options()
    spec = RULES[FORMATS_RULE].spec
    calls = [(a["param"], a["grad"], a["param"], *spec.arrays(a)) for a in tensors]

    def step():
        for arrays in calls:
            kernel(*arrays, 1.0, False, False, *scalars)
    return step


def _torch_dtype(torch, code):
    return {_F.F32: torch.float32, _F.BF16: torch.bfloat16, _F.F16: torch.float16}[code]


def _to_torch(torch, a, code):
    if code in (_F.BF16, _F.BF16_SR):
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _peer_params(torch, recipe, size, parameter):
    """Torch tensors of ``recipe``'s param format with grads (the peers' own copies)."""
    out = []
    for arrays in _format_arrays(recipe, size):
        p = _to_torch(torch, arrays["param"], recipe.param)
        p = torch.nn.Parameter(p) if parameter else p.requires_grad_()
        p.grad = _to_torch(torch, arrays["grad"], recipe.grad)
        out.append(p)
    return out


def _torch_formats_case(recipe, size):
    """torch.optim.AdamW(fused=True) with ``recipe``'s formats, where torch has them."""
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install fastgd[torch])") from None
    if recipe.out != _F.NONE:
        raise Skip("torch.optim has no master-weight step (float32 param, 16-bit grad in, 16-bit copy out)")
    if recipe.param == _F.BF16_SR:
        raise Skip("torch.optim has no stochastic rounding")
    o, _ = _formats_options()
    params = _peer_params(torch, recipe, size, parameter=False)
    opt = torch.optim.AdamW(params, lr=o["lr"], betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"],
                            fused=True)
    if recipe.state != recipe.param:   # torch keeps states in the param's dtype: give it others
        for p in params:
            opt.state[p] = {"step": torch.tensor(0.0),
                            "exp_avg": torch.zeros_like(p, dtype=_torch_dtype(torch, recipe.state)),
                            "exp_avg_sq": torch.zeros_like(p, dtype=_torch_dtype(torch, recipe.state))}
    try:
        opt.step()
    except Exception as exc:  # torch refuses this combination: a skipped row, with torch's words
        raise Skip(f"torch.optim.AdamW(fused=True): {type(exc).__name__}: {str(exc)[:120]}") from None
    return opt.step


def _deepspeed_formats_case(recipe, size):
    """DeepSpeedCPUAdam (AdamW mode) with ``recipe``'s formats: float32, bfloat16 or float16
    params and grads; float32 states (fp32_optimizer_states=True) or the param's dtype."""
    if recipe.out != _F.NONE or recipe.param == _F.BF16_SR or recipe.grad != recipe.param or (
            recipe.state not in (_F.F32, recipe.param)):
        raise Skip("DeepSpeed CPUAdam has no such combination (params and grads of one dtype, "
                   "states float32 or that dtype)")
    cls, kwargs = _deepspeed_optimizer(RULES[FORMATS_RULE])
    import torch
    params = _peer_params(torch, recipe, size, parameter=True)
    try:
        opt = cls(params, **kwargs, fp32_optimizer_states=recipe.state == _F.F32)
        opt.step()
    except Exception as exc:  # the JIT build failed, or a combination DeepSpeed refuses
        raise Skip(f"DeepSpeed {cls.__name__}: {type(exc).__name__}: {str(exc)[:160]}") from None
    return opt.step


def make_format_case(recipe, backend, size):
    """One AdamW step over ``size`` in ``recipe``'s formats on ``backend``: "cython", "numba"
    (adam_many), "<backend> adam" (the single float32 kernel; fp32 only), "torch-fused",
    "deepspeed"; raises Skip with the reason it cannot run (bench/test_formats.py)."""
    if backend in ("torch-fused", "deepspeed"):
        if backend == "deepspeed" and recipe.deepspeed != recipe.name:
            raise Skip("DeepSpeed CPUAdam has no such combination")
        return (_torch_formats_case if backend == "torch-fused" else _deepspeed_formats_case)(recipe, size)
    if backend.endswith(BEFORE):
        if recipe.name != "fp32":
            raise Skip("the single kernel steps float32 (or float64) arrays only")
        return _before_case(backend.removesuffix(BEFORE), _format_arrays(recipe, size))
    if backend not in ("cython", "numba"):
        raise ValueError(f"unknown backend {backend!r}")
    return _many_case(recipe, backend, _format_arrays(recipe, size))


def _formats_groups(size, backends, skipped):
    """The round-robin groups of preset formats over ``size``: per recipe, adam_many on each
    compiled backend, the peers of those formats, and (fp32) the single adam kernel."""
    compiled = [b for b in backends if b in ("cython", "numba")]
    layout = "array" if size.tensors == 1 else "list"
    groups = []
    for recipe in FORMAT_RECIPES:
        label = f"{FORMATS_RULE} {recipe.name}"
        entries = []
        try:
            tensors = _format_arrays(recipe, size)
        except Skip as why:
            skipped.extend({"rule": label, "size": size.label, "backend": b, "reason": str(why)} for b in backends)
            continue
        for b in compiled:
            entries.append(_guarded(skipped, label, size, b, lambda b=b: Entry(
                b, "fastgd", _many_case(recipe, b, tensors), layout, uses=b)))
            if recipe.name == "fp32":
                entries.append(_guarded(skipped, label, size, b + BEFORE, lambda b=b: Entry(
                    b + BEFORE, "fastgd", _before_case(b, tensors), layout, uses=b,
                    note="the single float32 kernel adam, per tensor: the step before adam_many")))
        if "torch-fused" in backends:
            entries.append(_guarded(skipped, label, size, "torch-fused", lambda: Entry(
                "torch-fused", "peer", _torch_formats_case(recipe, size), "list")))
        if "deepspeed" in backends and recipe.deepspeed == recipe.name:
            entries.append(_guarded(skipped, label, size, "deepspeed", lambda: Entry(
                "deepspeed", "peer", _deepspeed_formats_case(recipe, size), "list")))
        entries = [e for e in entries if e]
        if entries:
            groups.append(Group(FORMATS_RULE, recipe.bytes_per_element, 3, entries, pattern=recipe.pattern,
                                recipe=recipe))
    return groups


def _formats_ratios(rows):
    """Each row's speedups over the same run's torch fused fp32 and bf16, its DeepSpeed row and
    (fastgd rows) its backend's single fp32 kernel: fields speedup_vs_torch_fused (fp32),
    speedup_vs_torch_fused_bf16, deepspeed_recipe, speedup_vs_deepspeed, speedup_vs_before."""
    recipes = {r.name: r for r in FORMAT_RECIPES}
    runs = {}
    for row in rows:
        runs.setdefault((row["size"], row["threads"]), {})[(row["recipe"], row["backend"])] = row["seconds"]
    for row in rows:
        times = runs[(row["size"], row["threads"])]
        t = row["seconds"]
        stream = row["kind"] == "stream"

        def vs(key):
            other = times.get(key)
            return None if stream or other is None else other / t
        ds = recipes[row["recipe"]].deepspeed
        backend = row["backend"].removesuffix(BEFORE)
        row.update(speedup_vs_torch_fused=vs(("fp32", "torch-fused")),
                   speedup_vs_torch_fused_bf16=vs(("bf16", "torch-fused")),
                   deepspeed_recipe=ds, speedup_vs_deepspeed=vs((ds, "deepspeed")) if ds else None,
                   speedup_vs_before=vs(("fp32", backend + BEFORE)) if row["kind"] == "fastgd" else None)
    return rows


def formats_targets(rows, targets=FORMAT_TARGETS):
    """Issue 14's targets (FORMAT_TARGETS; or ``targets``, the same shape: preset lowbit's)
    against the rows of a formats run: one entry per target, fastgd adam_many row (size,
    threads, backend): its value, the least, met (None when the value is missing: a peer
    absent, a row in cache)."""
    out = []
    many = [r for r in rows if r["kind"] == "fastgd" and not r["backend"].endswith(BEFORE)]
    for recipe, field, least, text in targets:
        for row in many:
            if recipe is not None and row["recipe"] != recipe:
                continue
            value = row.get(field)
            why = None
            if value is None:
                why = ("in cache" if field == "fraction_of_bandwidth" and row["in_cache"]
                       else "no row to compare with")
            out.append({"target": text.format(recipe=row["recipe"]), "recipe": row["recipe"], "field": field,
                        "size": row["size"], "threads": row["threads"], "backend": row["backend"],
                        "value": value, "least": least, "met": None if value is None else value >= least,
                        "why_not_measured": why})
    return out


def run_formats(*, sizes, threads, backends, rounds=7, min_seconds=0.05, stream_elements=STREAM_ELEMENTS,
                progress=None):
    """Preset formats (issue 14: fewer bytes per step): per size and thread count, in one
    round-robin, AdamW through adam_many in every recipe of FORMAT_RECIPES on each compiled
    backend, the single float32 adam kernel ("<backend> adam", the before row), torch fused
    AdamW and DeepSpeedCPUAdam in the formats they have, and per access pattern a
    stream_formats stream moving exactly the recipe's bytes per element. Returns (rows,
    skipped, targets); rows carry recipe, formats and the speedups of _formats_ratios."""
    rows_backends = [b for b in expand_backends(backends) if b in FORMATS_BACKENDS]
    skipped = []

    def units(size):
        yield "adamw formats", _formats_groups(size, rows_backends, skipped)
    rows = run_groups(units, sizes=sizes, dtype=np.float32, threads=threads, rounds=rounds,
                      min_seconds=min_seconds, stream_elements=stream_elements, progress=progress)
    rows = _formats_ratios(rows)
    return rows, skipped, formats_targets(rows)


# --- preset callpath -----------------------------------------------------------------------------

CALLPATH_ELEMENTS = 1_000
CALLPATH_TENSORS = 150
CALLPATH_BACKENDS = ("cython", "numba", "torch")


def _callpath_cases(backend, rng):
    """{case: (fn, tensors)} of the Adam call paths on one compiled backend, 1,000 float32."""
    n = CALLPATH_ELEMENTS

    def arrays(k):
        return [rng.standard_normal(n).astype(np.float32) for _ in range(k)]
    p, g = arrays(2)
    opt = fastgd.Adam([p])
    fp, fg, fm, fv = arrays(2) + [np.zeros(n, np.float32) for _ in range(2)]
    counter = [0]

    def functional():
        counter[0] += 1
        fastgd.functional.adam_(fp, fg, fm, fv, step=counter[0])
    kp, kg, km, kv = arrays(2) + [np.zeros(n, np.float32) for _ in range(2)]
    adam = _backends.kernel("adam", backend)
    beta1, beta2 = 0.9, 0.999
    # The kernel functional.adam_ calls, with the arguments it passes (step 10's bias corrections).
    args = (kp, kg, kp, km, kv, kv, 1.0, False, False, 1e-3, beta1, beta2, 1e-8, 0.0, False, False,
            1 - beta1 ** 10, 1 - beta2 ** 10)
    return {"opt.step": (lambda: opt.step([g]), 1), "functional.adam_": (functional, 1),
            "kernel": (lambda: adam(*args), 1)}


def _torch_params(torch, rng):
    params = []
    for _ in range(CALLPATH_TENSORS):
        t = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(CALLPATH_ELEMENTS).astype(np.float32)))
        t.grad = torch.from_numpy(rng.standard_normal(CALLPATH_ELEMENTS).astype(np.float32))
        params.append(t)
    return params


def _new_grads_step(torch, rng, make):
    """A step of optimizer ``make(params)`` after new gradient tensors are assigned (two sets
    in turn), as after zero_grad(set_to_none=True) and backward: the gradients' addresses
    change every step. The assignment (~0.2 us a tensor) is timed too."""
    params = _torch_params(torch, rng)
    opt = make(params)
    sets = [[torch.from_numpy(rng.standard_normal(CALLPATH_ELEMENTS).astype(np.float32))
             for _ in params] for _ in range(2)]
    turn = [0]

    def step():
        turn[0] ^= 1
        for p, g in zip(params, sets[turn[0]]):
            p.grad = g
        opt.step()
    return step


def run_callpath(*, threads, backends, rounds=7, min_seconds=0.05, progress=None):
    """Preset callpath: (rows, skipped). In one round-robin per thread count, for each compiled
    backend ``opt.step([g])`` of fastgd.Adam, ``functional.adam_`` and the raw kernel on 1,000
    float32, ``np.add(a, b, out=c)`` on 1,000 float32 (the yardstick), and with torch
    fastgd.torch.AdamW over 150 tensors of 1,000 against torch.optim.AdamW(fused=True), with
    the same gradients every step and with new gradient tensors every step ("new grads")."""
    rng = np.random.default_rng(0)
    skipped, cases = [], {}          # (case, backend) -> (fn, tensors, uses)
    compiled = [b for b in backends if b in ("cython", "numba")]

    def skip(case, backend, exc):
        skipped.append({"rule": case, "size": f"{CALLPATH_ELEMENTS:,}", "backend": backend,
                        "reason": f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"})

    def add(case, backend, build, uses):
        try:
            fn, tensors = build()
            _call_on(uses, fn)
        except Exception as exc:  # an API being rewritten, a backend that fails: a skipped row
            return skip(case, backend, exc)
        cases[(case, backend)] = (fn, tensors, uses)
    for b in compiled:
        try:
            built = _callpath_cases(b, rng)
        except Exception as exc:  # noqa: BLE001 - one skipped row for the backend's cases
            skip("opt.step, functional.adam_, kernel", b, exc)
            continue
        for case, (fn, tensors) in built.items():
            add(case, b, lambda fn=fn, tensors=tensors: (fn, tensors), b)
    x, y, out = (rng.standard_normal(CALLPATH_ELEMENTS).astype(np.float32) for _ in range(3))
    add("np.add", "numpy", lambda: ((lambda: np.add(x, y, out=out)), 1), None)
    torch_why = peer_status()["torch"]
    if "torch" in backends and torch_why is None:
        import torch

        import fastgd.torch as ft
        for b in compiled:
            add("fastgd.torch.AdamW", b, lambda: (ft.AdamW(_torch_params(torch, rng)).step, CALLPATH_TENSORS), b)
        add("torch.optim.AdamW(fused)", "torch",
            lambda: (torch.optim.AdamW(_torch_params(torch, rng), fused=True).step, CALLPATH_TENSORS), None)
        for b in compiled:
            add("fastgd.torch.AdamW, new grads", b,
                lambda: (_new_grads_step(torch, rng, ft.AdamW), CALLPATH_TENSORS), b)
        add("torch.optim.AdamW(fused), new grads", "torch", lambda: (_new_grads_step(
            torch, rng, lambda ps: torch.optim.AdamW(ps, fused=True)), CALLPATH_TENSORS), None)
    elif "torch" in backends:
        skipped.append({"rule": "fastgd.torch.AdamW", "size": f"{CALLPATH_TENSORS}x{CALLPATH_ELEMENTS:,}",
                        "backend": "torch", "reason": torch_why})
    rows = []
    torch_mod = sys.modules.get("torch")
    previous_torch_threads = torch_mod.get_num_threads() if torch_mod else None
    try:
        with fastgd.use_backend(fastgd.get_backend()), _backends.use_num_threads(fastgd.get_num_threads()):
            for nthreads in threads:
                set_threads(nthreads)
                if progress:
                    progress(f"call paths, threads={nthreads}")
                before = {k: functools.partial(fastgd.set_backend, uses)
                          for k, (_, _, uses) in cases.items() if uses}
                times = round_robin({k: fn for k, (fn, _, _) in cases.items()}, rounds=rounds,
                                    min_seconds=min_seconds, before=before)
                yardstick = times.get(("np.add", "numpy"))
                fused = times.get(("torch.optim.AdamW(fused)", "torch"))
                for (case, backend), t in times.items():
                    tensors = cases[(case, backend)][1]
                    rows.append({"case": case, "backend": backend, "threads": nthreads,
                                 "elements": CALLPATH_ELEMENTS, "tensors": tensors, "seconds": t,
                                 "seconds_per_tensor": t / tensors,
                                 "vs_np_add": t / tensors / yardstick if yardstick else None,
                                 "vs_torch_fused": t / fused if (fused and tensors > 1) else None})
    finally:
        if previous_torch_threads is not None:
            torch_mod.set_num_threads(previous_torch_threads)
    return rows, skipped


def load_json(path):
    """A bench JSON file, checked against the schema name (UsageError if it is not one)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if (not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS
            or not isinstance(data.get("results"), list)):
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
    opt = rule.make([param])
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
