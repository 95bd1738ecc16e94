"""The Numba <rule>_many kernels (fastgd/_numba/<rule>.py) against a reference built here from
fastgd/formats.py and the single-array NumPy reference: every role loaded to float32 (float64
stays float64), the single reference run on the copies, each written role stored back with
formats.store (kernels/CONTRACT.md, "Many tensors, any storage format").

Self-contained on purpose (the generic reference ``many`` in fastgd/_reference.py is written
elsewhere). Expected bitwise equal: Numba never contracts a * b + c into an FMA and the kernels
compute each element with the reference's operations in the reference's order, in float32, so
the float32 results are the same numbers and the stores round them the same way.
"""
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastgd._numba as nb
from fastgd import _reference as R
from fastgd import formats
from fastgd._numba._compile import PARALLEL_MIN

F32, BF16, F16, F64, SR, NONE = (formats.F32, formats.BF16, formats.F16, formats.F64,
                                 formats.BF16_SR, formats.NONE)
DTYPE = {F32: np.float32, BF16: formats.bfloat16, F16: np.float16, F64: np.float64,
         SR: formats.bfloat16}
LENGTHS = (1, 7, 1023, 100_003)     # above PARALLEL_MIN in all: the parallel variant
SMALL = (1, 7, 1023, 16)            # below: the serial variant

# rule -> (number of state arrays, states that must be > 0, {variant: (use_acc, scalars)}).
# Scalars in the kernel's order (fastgd/rules/<rule>.py: constants then scalars).
RULES = {
    "adam": (3, (1, 2), {
        "adamw": (False, (1e-3, 0.9, 0.999, 1e-8, 0.01, True, False, 0.19, 0.002)),
        "amsgrad_acc": (True, (1e-3, 0.9, 0.999, 1e-8, 0.01, False, True, 0.19, 0.002)),
    }),
    "sgd": (1, (), {
        "nesterov": (False, (0.01, 0.9, 0.0, 0.01, True, False)),
        "plain_acc": (True, (0.01, 0.0, 0.0, 0.0, False, False)),
        "first_damp": (False, (0.01, 0.9, 0.1, 0.0, False, True)),
    }),
    "adagrad": (1, (0,), {
        "default": (False, (0.01, 0.0, 1e-10)),
        "decay_acc": (True, (0.01, 0.01, 1e-10)),
    }),
    "rmsprop": (3, (0,), {
        "plain": (False, (0.01, 0.99, 1e-8, 0.0, 0.0, False)),
        "centered_momentum_acc": (True, (0.01, 0.9, 1e-8, 0.01, 0.9, True)),
        "momentum": (False, (0.01, 0.99, 1e-8, 0.0, 0.9, False)),
    }),
    "adamax": (2, (1,), {
        "default": (False, (2e-3, 0.9, 0.999, 1e-8, 0.01, 0.19)),
        "acc": (True, (2e-3, 0.9, 0.999, 1e-8, 0.0, 0.19)),
    }),
    "nadam": (2, (1,), {
        "nadamw": (False, (2e-3, 0.9, 0.999, 1e-8, 0.01, True, 0.0011, 0.0093, 0.002)),
        "coupled_acc": (True, (2e-3, 0.9, 0.999, 1e-8, 0.01, False, 0.0011, 0.0093, 0.002)),
    }),
    "radam": (2, (1,), {
        "adaptive": (False, (1e-3, 0.9, 0.999, 1e-8, 0.01, True, 0.65, 0.01, True, 0.3)),
        "early_acc": (True, (1e-3, 0.9, 0.999, 1e-8, 0.01, False, 0.19, 0.002, False, 0.0)),
    }),
    "lion": (1, (), {
        "default": (False, (1e-4, 0.9, 0.99, 0.1)),
        "acc": (True, (1e-4, 0.9, 0.99, 0.0)),
    }),
}

# Format configurations: (param, grad, grad_acc, states, out); states one code for all or a
# tuple per state (padded with its last).
FORMATS = {
    "all_f32": (F32, F32, F32, F32, NONE),
    "all_bf16": (BF16, BF16, BF16, BF16, NONE),
    "all_f16": (F16, F16, F16, F16, NONE),
    "bf16_params_f32_states": (BF16, BF16, BF16, F32, NONE),
    "f32_params_bf16_states": (F32, F32, F32, BF16, NONE),
    "f16_params_f32_states": (F16, F16, F16, F32, NONE),
    "master_bf16": (F32, BF16, BF16, F32, BF16),
    "master_f16": (F32, F16, F32, F16, F16),
    "master_mixed": (F32, BF16, F32, (BF16, F32, F16), F16),
    "bf16_sr": (SR, BF16, BF16, F32, NONE),
    "bf16_sr_bf16_states": (SR, F32, BF16, BF16, NONE),
    "all_f64": (F64, F64, F64, F64, NONE),
}
# the option variants that switch arrays, run on these formats (every format runs the first)
VARIANT_FORMATS = ("all_f32", "all_bf16", "master_bf16", "bf16_sr", "all_f64")


def codes_of(fmt, n_states):
    p, g, a, s, o = fmt
    s = s if isinstance(s, tuple) else (s,)
    states = [s[min(j, len(s) - 1)] for j in range(n_states)]
    return [p, g, a, *states, o]


def used_roles(rule, use_acc, scalars):
    """Roles the call uses (a variant's unused ones get stand-in addresses)."""
    n_states = RULES[rule][0]
    used = set(range(3 + n_states)) - ({2} if not use_acc else set())
    if rule == "adam" and not scalars[6]:
        used.discard(5)                                     # vmax without amsgrad
    if rule == "sgd" and scalars[1] == 0.0:
        used.discard(3)                                     # the buffer without momentum
    if rule == "rmsprop":
        if not scalars[4] > 0.0:
            used.discard(4)                                 # the buffer without momentum
        if not scalars[5]:
            used.discard(5)                                 # grad_avg unless centered
    return used


def random_values(rng, n, role, rule, dtype):
    """Random data of one role, never zero: second moments > 0, rmsprop's grad_avg small
    enough that the centered square_avg - grad_avg^2 stays > 0."""
    n_states, positive, _ = RULES[rule]
    x = rng.standard_normal(n)
    x = np.where(x == 0, 0.5, x)
    if role >= 3 and (role - 3) in positive:
        x = np.abs(x) + 0.05
        if rule == "rmsprop":
            x = x + 1.0
    if rule == "rmsprop" and role == 5:
        x = 0.1 * x
    return x.astype(dtype)


def make_tensors(rng, rule, codes, lengths, used):
    """Per tensor the arrays of every role in its format (out zeroed, or None); unused roles
    are stand-ins: the address of another array of the tensor (param for grad_acc, the first
    state for a state), as fastgd._core passes them."""
    tensors = []
    for n in lengths:
        roles = []
        for r, code in enumerate(codes[:-1]):
            if r not in used:
                roles.append(None)
                continue
            x = random_values(rng, n, r, rule, np.float64 if code == F64 else np.float32)
            roles.append(formats.store(x, code if code != SR else BF16))
        roles.append(None if codes[-1] == NONE else np.zeros(n, DTYPE[codes[-1]]))
        tensors.append(roles)
    return tensors


def stand_in(r, roles):
    """The stand-in of unused role r: param for grad_acc, a used state (else param) for a
    state, as the specs pass them (fastgd/rules/*.py ``arrays``)."""
    if r >= 3:
        for a in roles[3:-1]:
            if a is not None:
                return a
    return roles[0]


def table(tensors, codes, used, seed=7):
    n_roles = len(codes)
    ptrs = np.zeros((len(tensors), n_roles), np.int64)
    fmts = np.array(codes, np.int32)
    for k, roles in enumerate(tensors):
        for r in range(n_roles):
            a = roles[r]
            if a is None and r < n_roles - 1:
                a = stand_in(r, roles)
                code = formats.code_of(a.dtype)                 # its format (SR param: bf16)
                fmts[r] = code
            ptrs[k, r] = 0 if a is None else a.ctypes.data
    offsets = np.zeros(len(tensors) + 1, np.int64)
    offsets[1:] = np.cumsum([roles[0].size for roles in tensors])
    keys = np.array([formats.sr_key(seed, 3, k) for k in range(len(tensors))], np.uint32)
    return ptrs, offsets, fmts, keys


def reference(rule, tensors, codes, keys, grad_scale, maximize, use_acc, scalars, used):
    """The expected arrays after the step (None where a role is not written)."""
    expected = []
    for k, roles in enumerate(tensors):
        f = []
        for r, a in enumerate(roles[:-1]):
            src = a if a is not None else stand_in(r, roles)
            f.append(formats.load(src).copy())
        getattr(R, rule)(*f, grad_scale, maximize, use_acc, *scalars)
        out = [formats.store(f[r], codes[r], int(keys[k])) if r in used and r != 1 else None
               for r in range(len(roles) - 1)]
        out.append(None if codes[-1] == NONE else formats.store(f[0], codes[-1]))
        expected.append(out)
    return expected


def bits(a):
    return a.view(np.uint64 if a.itemsize == 8 else np.uint32 if a.itemsize == 4 else np.uint16)


def assert_same(actual, expected, what):
    """Bitwise equal (a float16 NaN only as NaN: formats.py promises "NaN stays a NaN")."""
    a, e = bits(actual), bits(expected)
    bad = np.flatnonzero(a != e)
    if bad.size and actual.dtype == np.float16:
        bad = bad[~(np.isnan(actual[bad]) & np.isnan(expected[bad]))]
    if bad.size:
        i = bad[:5]
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ, e.g. at {i}: "
                             f"{actual[i]} != {expected[i]} (bits {a[i]} vs {e[i]})")


def run_case(rule, fmt_name, variant, lengths=LENGTHS, seed=0, grad_scale=0.75, maximize=False):
    rng = np.random.default_rng(seed)
    n_states, _, variants = RULES[rule]
    use_acc, scalars = variants[variant]
    codes = codes_of(FORMATS[fmt_name], n_states)
    used = used_roles(rule, use_acc, scalars)
    tensors = make_tensors(rng, rule, codes, lengths, used)
    grads = [roles[1].copy() for roles in tensors]
    ptrs, offsets, fmts, keys = table(tensors, codes, used)
    expected = reference(rule, tensors, codes, keys, grad_scale, maximize, use_acc, scalars, used)
    getattr(nb, f"{rule}_many")(ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *scalars)
    for k, (roles, exp) in enumerate(zip(tensors, expected)):
        assert_same(roles[1], grads[k], f"{rule} {fmt_name} tensor {k}: grad changed")
        for r, (a, e) in enumerate(zip(roles, exp)):
            if e is not None:
                assert_same(a, e, f"{rule} {fmt_name} {variant} tensor {k} (n={a.size}) role {r}")
    return tensors


CASES = [(rule, fmt, next(iter(RULES[rule][2]))) for rule in RULES for fmt in FORMATS]
CASES += [(rule, fmt, variant) for rule in RULES for variant in list(RULES[rule][2])[1:]
          for fmt in VARIANT_FORMATS]


@pytest.mark.parametrize("rule,fmt,variant", CASES)
def test_many_matches_reference(rule, fmt, variant):
    run_case(rule, fmt, variant)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("fmt", ["all_f32", "all_bf16", "master_f16", "bf16_sr"])
def test_many_serial_matches_reference(rule, fmt):
    """Below PARALLEL_MIN elements in all: the serial variant."""
    assert sum(SMALL) < PARALLEL_MIN
    run_case(rule, fmt, next(iter(RULES[rule][2])), lengths=SMALL, seed=1)


@pytest.mark.parametrize("maximize", [False, True])
def test_many_maximize_and_empty_tensors(maximize):
    """maximize negates the gradient; a tensor of 0 elements in the list is skipped."""
    run_case("adam", "master_bf16", "adamw", lengths=(5, 0, 40_000, 0, 3), maximize=maximize)


def test_many_float32_is_the_single_kernel():
    """All float32: bitwise the single Numba kernel's result on each tensor."""
    rng = np.random.default_rng(3)
    use_acc, scalars = RULES["adam"][2]["amsgrad_acc"]
    codes = codes_of(FORMATS["all_f32"], 3)
    used = used_roles("adam", use_acc, scalars)
    tensors = make_tensors(rng, "adam", codes, LENGTHS, used)
    copies = [[a.copy() for a in roles[:-1]] for roles in tensors]
    ptrs, offsets, fmts, keys = table(tensors, codes, used)
    nb.adam_many(ptrs, offsets, fmts, keys, 0.5, False, use_acc, *scalars)
    for roles, c in zip(tensors, copies):
        nb.adam(*c, 0.5, False, use_acc, *scalars)
        for a, b in zip(roles[:-1], c):
            assert_same(a, b, "adam_many vs adam")


def test_many_rounding_of_special_values():
    """The stores, bit for bit, on every kind of float32: SGD with lr = 0 and no momentum
    leaves the master param as it is (p - 0 * g), and the 16-bit out copy is then its rounding
    alone: NaN (quieted, sign kept), infinities, zeros, float32 subnormals (flushed in bfloat16,
    rounded in float16), halfway cases, values that round up to infinity."""
    rng = np.random.default_rng(5)
    n = 50_000
    u = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0, 0x80000000,
                        0x00000001, 0x807FFFFF, 0x00400000, 0x3F808000, 0x3F818000, 0x3F817FFF,
                        0x7F7FFFFF, 0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x387FC000,
                        0xB3800000], np.uint32)
    u[:special.size] = special
    p = u.view(np.float32)
    scalars = (0.0, 0.0, 0.0, 0.0, False, False)
    for out_code in (BF16, F16):
        param = p.copy()
        grad = np.ones(n, np.float32)
        out = np.zeros(n, DTYPE[out_code])
        ptrs = np.array([[param.ctypes.data, grad.ctypes.data, param.ctypes.data,
                          param.ctypes.data, out.ctypes.data]], np.int64)
        nb.sgd_many(ptrs, np.array([0, n], np.int64), np.array([F32, F32, F32, F32, out_code], np.int32),
                    np.zeros(1, np.uint32), 1.0, False, False, *scalars)
        ref = p.copy()
        with np.errstate(invalid="ignore", over="ignore"):   # inf - 0 * 1, rounding to inf
            R.sgd(ref, grad.copy(), ref, ref, 1.0, False, False, *scalars)
            expected = formats.store(ref, out_code)
        assert_same(param, ref, "param")
        assert_same(out, expected, f"out {formats.NAMES[out_code]}")


def test_many_stochastic_rounding_is_unbiased_and_keyed():
    """bf16 SR param: different keys give different roundings of the same values, and the mean
    of many independent roundings is the float32 value."""
    n, reps = 4096, 64
    x = np.float32(1.0) + np.arange(n, dtype=np.float32) * np.float32(2.0 ** -20)
    acc = np.zeros(n)
    outs = []
    for rep in range(reps):
        param = formats.store(np.zeros(n, np.float32), BF16)
        grad = (-x).astype(np.float32)                      # p = 0 - 1 * (-x) = x, exactly
        ptrs = np.array([[param.ctypes.data, grad.ctypes.data, grad.ctypes.data, grad.ctypes.data,
                          0]], np.int64)
        keys = np.array([formats.sr_key(11, rep, 0)], np.uint32)
        nb.sgd_many(ptrs, np.array([0, n], np.int64), np.array([SR, F32, F32, F32, NONE], np.int32),
                    keys, 1.0, False, False, 1.0, 0.0, 0.0, 0.0, False, False)
        assert_same(param, formats.to_bfloat16_sr(x, int(keys[0])), "SR param")
        acc += param.astype(np.float64)
        outs.append(param.view(np.uint16).copy())
    assert any((outs[0] != o).any() for o in outs[1:])
    # round to nearest would be off by a quarter ulp (2^-9) on average here; 64 unbiased
    # roundings average to within ~2^-11.5
    assert np.abs(acc / reps - x).mean() < 2.0 ** -10


@pytest.mark.parametrize("rule,fmt", [("adam", "all_f32"), ("adam", "bf16_sr"), ("lion", "master_f16"),
                                      ("rmsprop", "all_bf16"), ("nadam", "f16_params_f32_states")])
def test_many_same_at_one_and_two_threads(rule, fmt):
    """Bitwise the same result with 1 and 2 threads (above PARALLEL_MIN in all)."""
    assert sum(LENGTHS) >= PARALLEL_MIN
    results = []
    old = nb._Runtime.num_threads
    try:
        for threads in (1, 2):
            nb.set_num_threads(threads)
            tensors = run_case(rule, fmt, next(iter(RULES[rule][2])), seed=9)
            results.append([[a.copy() for a in roles if a is not None] for roles in tensors])
    finally:
        nb._Runtime.num_threads = old
        nb._Runtime.generation += 1
    for t1, t2 in zip(*results):
        for a, b in zip(t1, t2):
            assert_same(a, b, "1 vs 2 threads")


def test_many_is_exported_for_every_rule():
    for rule in RULES:
        assert callable(getattr(nb, f"{rule}_many"))
    assert numba.config.NUMBA_NUM_THREADS >= 1


CACHE_RUN = """
import json, numpy as np, fastgd._numba as nb
out = {}
for n in (100, 40_000):                          # the serial and the parallel variant
    p, g, m = np.ones(n, np.float32), np.full(n, 3.0, np.float32), np.zeros(n, np.float32)
    h = np.zeros(n, np.uint16)
    ptrs = np.array([[p.ctypes.data, g.ctypes.data, p.ctypes.data, m.ctypes.data, h.ctypes.data]])
    nb.lion_many(ptrs, np.array([0, n]), np.array([0, 0, 0, 0, 1], np.int32),
                 np.zeros(1, np.uint32), 1.0, False, False, 0.1, 0.9, 0.99, 0.0)
    out[n] = float(m[0])
ds = list(nb.lion_many.dispatchers.values()) + list(nb.lion_many.segments.values())
out["hits"] = sum(sum(d.stats.cache_hits.values()) for d in ds)
out["misses"] = sum(sum(d.stats.cache_misses.values()) for d in ds)
print(json.dumps(out))
"""


def test_many_specialisations_are_cached_on_disk(tmp_path):
    """A format combination compiled in one process is loaded from the disk cache in the next
    (segment, serial and parallel driver), not compiled again."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CACHE_RUN], env=env, capture_output=True,
                             text=True, timeout=600, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    first, second = runs
    assert first["100"] == second["100"] == pytest.approx(0.03)     # m = (1 - b2) * g
    assert first["hits"] == 0 and first["misses"] == 3           # segment, serial, parallel
    # both drivers from the cache (the segment's machine code is in theirs: never compiled)
    assert second["hits"] == 2 and second["misses"] == 0
