"""Build of the Cython kernels only; all metadata lives in pyproject.toml.

Every ``kernels/<name>.pyx`` becomes the extension ``fastgd._cython.<name>``, compiled with
OpenMP and optimisation flags. By default the code is tuned for the CPU it is built on
(``-march=native``): the package is built on the machine that runs it. Set
``FASTGD_MARCH=portable`` (or any ``-march`` value, e.g. ``x86-64-v3``) for a binary that runs
elsewhere. The flags and the build host's SIMD features are written to ``build_info.json`` next
to the extensions, so ``fastgd info`` can show them and the registry can refuse (instead of
crashing with an illegal instruction) an extension built for a CPU this one is not.
"""
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

# SIMD feature names from /proc/cpuinfo that -march=native can make the compiler use.
SIMD_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "popcnt", "lzcnt", "abm", "movbe", "adx")


def _march():
    value = os.environ.get("FASTGD_MARCH", "native").strip()
    return None if value in ("", "portable", "none", "0") else value


def _openmp():
    return os.environ.get("FASTGD_OPENMP", "1").strip() not in ("0", "no", "false")


def _cpu_simd_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(x for x in line.split(":", 1)[1].split() if x.startswith(SIMD_PREFIXES))
    except OSError:
        pass
    return []


def _compile_args():
    # -fno-math-errno lets sqrt vectorise (no errno branch); -fno-trapping-math lets the
    # compiler if-convert max/min. Neither changes a result for finite or non-finite inputs.
    # -fno-inline-functions keeps each *_piece loop a function of its own: inlined into the
    # wrapper that also holds the OpenMP region, its scalars became address-taken shared
    # variables, gcc reloaded them every iteration and left the serial loop scalar (3.7 ns per
    # Adam element instead of 0.45 at 10,000 float32, measured).
    # vect-max-version-for-alias-checks: gcc vectorises a loop over arrays it cannot prove
    # disjoint only behind runtime overlap checks, at most 10 of them by default; AMSGrad with
    # fused accumulation streams 6 arrays (15 pairs) and stayed scalar, ~5x slower (measured).
    # -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which setuptools puts first (it is
    # CPython's need, not ours): with signed overflow defined gcc may not assume a signed index
    # never wraps, which blocks some of its loop optimisations. Without it (one-process A/B of
    # the two builds, 16M, 1 thread): 4-bit AdamW 1.16x, bf16 stochastic rounding 1.17x, 8-bit
    # 1.04x, the rest within 4%. No kernel relies on signed wrap-around: the hashes are
    # unsigned and the wrapping vector arithmetic is intrinsics.
    args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-inline-functions", "-fno-inline-functions-called-once",
            "--param=vect-max-version-for-alias-checks=32", "-fno-wrapv"]
    if _march():
        args.append(f"-march={_march()}")
    if _openmp():
        args.append("-fopenmp")
    return args


# A float32 loop for _vector_bits: the shape of a rule's arithmetic on its lanes.
_PROBE = "void f(float* restrict a, const float* restrict b, int n) { for (int i = 0; i < n; i++) a[i] = a[i] * b[i] + b[i]; }"


def _vector_bits(compiler):
    """The width in bits ``compiler`` (the extensions' command line: the compiler and its
    flags) vectorises a float32 loop at with the kernels' flags too: its
    tuning's preferred width, which no macro tells. gcc 12 prefers 256 bits on Intel's AVX-512
    cores (their tunings), and 512 where it does not know the CPU (a Zen 4 is -march=znver3 plus
    AVX-512 to gcc 12.2). Read off the assembly of a probe: 512 if it uses zmm registers, else
    256; 256 if the compiler cannot be run (the portable choice: kernels/_formats.h)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(_PROBE + "\n")
        try:
            asm = subprocess.run([*compiler, *_compile_args(), "-S", "-o", "-", src],
                                 capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return 256
    return 512 if "%zmm" in asm else 256


def _l1d_bytes():
    """The build CPU's level-1 data cache in bytes (sysfs; 0 if unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in sorted(glob.glob(os.path.join(base, "index*"))):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip().upper()
        except OSError:
            continue
        if level == "1" and kind == "Data" and size.endswith("K") and size[:-1].isdigit():
            return int(size[:-1]) * 1024
    return 0


def _prefetch_ahead():
    """FGD_PF_AHEAD for a -march=native build (None: the header's default, 2048 elements): 0,
    no software prefetch in the lane loops, where the build CPU's L1 data cache is under 48 KiB.
    Measured on two CPUs (kernels/_formats.h says how much): with a 48 KiB L1 (Zen 5) the
    prefetch made one thread up to 1.19x faster; with 32 KiB (Zen 4) the lane loops ran 0.82-0.90x
    the time without it, and a shorter distance (512, 1024) or prefetcht1 did not recover that."""
    if _march() != "native":
        return None
    l1 = _l1d_bytes()
    return 0 if 0 < l1 < 48 * 1024 else None


def _link_args():
    return ["-fopenmp"] if _openmp() else []


class BuildExtWithInfo(build_ext):
    """build_ext that also records how the kernels were compiled."""

    def finalize_options(self):
        super().finalize_options()
        # pip's build (the README's install) runs build_ext without -j: the modules are
        # independent, so compile them on every core (serial: 65 s on 2 cores)
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        # the lane loops' 16-bit loads and stores at the width the rules' arithmetic runs at,
        # their prefetch by the L1 data cache (kernels/_formats.h)
        self.vector_bits = _vector_bits(self.compiler.compiler_so)
        self.prefetch_ahead = _prefetch_ahead()
        for ext in self.extensions:
            ext.define_macros.append(("FGD_VECTOR_BITS", str(self.vector_bits)))
            if self.prefetch_ahead is not None:
                ext.define_macros.append(("FGD_PF_AHEAD", str(self.prefetch_ahead)))
        super().build_extensions()

    def run(self):
        self.vector_bits = self.prefetch_ahead = None
        super().run()
        if not self.extensions:
            return
        target = os.path.join(os.path.dirname(self.get_ext_fullpath(self.extensions[0].name)), "build_info.json")
        try:
            cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            cc = "unknown"
        info = {
            "compile_args": _compile_args(),
            "link_args": _link_args(),
            "march": _march(),
            "openmp": _openmp(),
            "vector_bits": self.vector_bits,
            "l1d_bytes": _l1d_bytes() if _march() == "native" else None,
            "prefetch_ahead": self.prefetch_ahead,   # FGD_PF_AHEAD; null: kernels/_formats.h's 2048
            "compiler": cc,
            "machine": platform.machine(),
            "build_cpu_simd_flags": _cpu_simd_flags() if _march() == "native" else [],
            "cython": __import__("Cython").__version__,
            "python": sys.version.split()[0],
        }
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(info, f, indent=1)


# Modules compiled without fused multiply-add contraction. rmsprop.pyx: centered RMSprop's
# sqrt(sq - ga * ga) cancels (with alpha = 0, sq = g * g and ga = g): fused, sq - ga * ga is
# the rounding error of g * g, negative half the time, and sqrt gives NaN where the reference
# (and Numba, which never contracts) gets sqrt(0); with a small alpha the fused form is off by
# 1e-9 relative. adagrad.pyx has no such cancellation, but it shared a module with RMSprop until
# the rules were split one per file and was built this way: kept, so its results stay bitwise
# what they were (and what Numba computes); contracted, s + g * g and the update become FMAs.
# lion.pyx: its decay 1 - lr * weight_decay contracted is an FMA that gives -2e-17 where the
# reference gets 0 (lr = 1e-4, weight_decay = 1e4), so an inf parameter became -inf, not NaN
# (found by the fuzzer with another seed).
# Memory-bound loops: a multiply and an add cost what one FMA does.
NO_FP_CONTRACT = ("adagrad", "rmsprop", "lion")


def _extensions():
    sources = sorted(glob.glob(os.path.join("kernels", "*.pyx")))
    exts = [
        Extension(
            f"fastgd._cython.{os.path.splitext(os.path.basename(src))[0]}",
            [src],
            include_dirs=[numpy.get_include(), "kernels"],
            extra_compile_args=_compile_args() + (
                ["-ffp-contract=off"] if os.path.splitext(os.path.basename(src))[0] in NO_FP_CONTRACT else []),
            extra_link_args=_link_args(),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    return cythonize(
        exts,
        nthreads=os.cpu_count() or 1,   # .pyx -> .c on every core too
        include_path=["kernels"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtWithInfo})
