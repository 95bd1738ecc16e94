"""What only the Numba <rule>_many kernels have (fastgd/_numba/_many.py): the serial variant
(small calls) of every rule, empty tensors, the exports, and their on-disk cache of compiled
copies. tests/test_many.py checks both backends against the reference (formats, variants,
threads); the reference here is built from fastgd/formats.py and the single NumPy reference,
and the Numba results are bitwise equal to it (Numba never contracts a * b + c into an FMA).
"""
import numba
import numpy as np
import pytest

import fastgd._numba as nb
from fastgd import _reference as R
from fastgd import formats
from fastgd._numba._compile import PARALLEL_MIN
from fastgd._numba._by_address import type_tag

from _subproc import json_runs_with_cache

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


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("fmt", ["all_bf16", "master_f16"])
def test_many_serial_matches_reference(rule, fmt):
    """Below PARALLEL_MIN elements in all: the serial variant."""
    assert sum(SMALL) < PARALLEL_MIN
    run_case(rule, fmt, next(iter(RULES[rule][2])), lengths=SMALL, seed=1)


@pytest.mark.parametrize("maximize", [False, True])
def test_many_maximize_and_empty_tensors(maximize):
    """maximize negates the gradient; a tensor of 0 elements in the list is skipped."""
    run_case("adam", "master_bf16", "adamw", lengths=(5, 0, 40_000, 0, 3), maximize=maximize)


def test_many_is_exported_for_every_rule():
    for rule in RULES:
        assert callable(getattr(nb, f"{rule}_many"))
    assert numba.config.NUMBA_NUM_THREADS >= 1



def test_stochastic_rounding_bits_as_the_views_compute_them():
    """_views._sr_bits computes sr_hash(k ^ g) with mix32's first step split into a key half and
    an index half (xor and shifts are linear), times the role's multiplier: the same bits as
    formats.sr_bits for any key, index and role, and the param's (role 0) mix32(k ^ g) >> 16
    (mix32's last step leaves the high 16 bits). NumPy, no compile."""
    rng = np.random.default_rng(5)
    i = np.concatenate([np.arange(4096), rng.integers(0, 2**40, 4096)]).astype(np.uint64)
    g = (i * np.uint64(formats.GOLDEN) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    for k in map(np.uint32, [0, 1, 0xFFFFFFFF, *rng.integers(0, 2**32, 6)]):
        x = (k ^ (k >> np.uint32(16))) ^ (g ^ (g >> np.uint32(16)))
        with np.errstate(over="ignore"):
            x = x * np.uint32(0x7FEB352D)
            x ^= x >> np.uint32(15)
            x = x * np.uint32(0x846CA68B)
        assert np.array_equal(x, formats.sr_hash(k ^ g)), hex(int(k))
        assert np.array_equal(x >> np.uint32(16), formats.mix32(k ^ g) >> np.uint32(16))
        for role in range(7):
            with np.errstate(over="ignore"):
                want = (x * np.uint32(formats.role_multiplier(role))) >> np.uint32(16)
            assert np.array_equal(want[:4096], formats.sr_bits(k, 4096, role)), (hex(int(k)), role)
        # the roles draw different bits
        assert not np.array_equal(formats.sr_bits(k, 4096, 0), formats.sr_bits(k, 4096, 3))


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
    (its segment, and the rule's serial and parallel driver), not compiled again."""
    first, second = json_runs_with_cache(CACHE_RUN, tmp_path)
    assert first["100"] == second["100"] == pytest.approx(0.03)     # m = (1 - b2) * g
    assert first["hits"] == 0 and first["misses"] == 3           # segment, serial, parallel
    # the segment and both drivers from the cache
    assert second["hits"] == 3 and second["misses"] == 0


def test_driver_refuses_a_segment_compiled_for_other_scalars():
    """The driver calls its segment by address, so the two must agree on the type of the
    scalars tuple; the call table keeps the segment's type tag and the driver compares it with
    its own before touching an element: a wrong tag is a TypeError, nothing written."""
    variant = next(iter(RULES["lion"][2]))
    use_acc, scalars = RULES["lion"][2][variant]
    tensors = run_case("lion", "all_bf16", variant, lengths=SMALL, seed=2)
    codes = codes_of(FORMATS["all_bf16"], RULES["lion"][0])
    ptrs, offsets, fmts, keys = table(tensors, codes, used_roles("lion", use_acc, scalars))
    entry, address, ctag, align = nb.lion_many.table[
        (tuple(fmts.tolist()), ptrs.shape[1], nb.lion_many.flags(use_acc, scalars)[0], False)]
    scalars = tuple(bool(s) if isinstance(s, bool) else float(s) for s in scalars)
    assert ctag == type_tag(nb.lion_many.consts_type(np.float32, numba.typeof(scalars)))
    before = [[None if r is None else r.copy() for r in roles] for roles in tensors]
    with pytest.raises(TypeError, match="other scalars"):
        entry(ptrs, offsets, keys, 1, 1.0, False, scalars, address, ctag ^ 1, align)
    for roles, old in zip(tensors, before):
        for a, b in zip(roles, old):
            if a is not None:
                assert_same(a, b, "lion: a refused call wrote")
