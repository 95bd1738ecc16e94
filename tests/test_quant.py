"""The quantized state formats (fastgd/quant.py, kernels/_quant.h).

* The reference against bitsandbytes 0.50.2 itself where it is installed (maps, codes, absmax,
  dequantized values; skipped, saying so, without bitsandbytes).
* The C functions of kernels/_quant.h against the reference, bit for bit: every grid index,
  every code's value, random data of many lengths and the special values; built here with gcc
  (tests/_quant_capi.c, loaded with ctypes) with the kernels' flags and with plain -O2, so a
  code does not depend on fused multiply-adds or the vector width.
* The reference's own properties: round-trip error bounds, ties, NaN, inf, zero blocks.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

from fastgd import quant as Q

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(HERE), "kernels")
f32 = np.float32
NAN, INF = f32("nan"), f32("inf")
LENGTHS = (1, 2, 127, 128, 129, 255, 256, 257, 1000, 4096, 100_003)


def bits(a):
    return np.ascontiguousarray(a, dtype=f32).view(np.uint32)


def random_data(rng, n, positive=False):
    """Values over many decades, some exact zeros, NaNs and a few infs."""
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 6, n)).astype(f32)
    if positive:
        x = np.abs(x)
    if n > 8:
        x[rng.integers(0, n, max(1, n // 200))] = 0
        x[rng.integers(0, n, max(1, n // 500))] = NAN
    if n > 1000:
        x[rng.integers(0, n, 2)] = INF
    return x


def special_blocks(block):
    """Blocks of special values (each exactly one block long), for codes and absmax."""
    rng = np.random.default_rng(7)
    base = rng.uniform(-1, 1, block).astype(f32)
    out = {}
    out["zeros"] = np.zeros(block, f32)
    out["negative zeros"] = -np.zeros(block, f32)
    out["nans"] = np.full(block, NAN)
    x = np.zeros(block, f32); x[3] = NAN; out["zeros and a nan"] = x
    x = base.copy(); x[0] = NAN; x[-1] = NAN; out["nan at the ends"] = x
    x = base.copy(); x[5] = INF; out["inf"] = x
    x = base.copy(); x[5] = -INF; x[6] = NAN; out["-inf and nan"] = x
    out["subnormal absmax"] = np.array([1e-45, 0, -1e-45, 1e-40] * (block // 4), f32)
    out["one value"] = np.full(block, f32(0.3))
    x = base.copy(); x[::7] = 0; x[1::7] = -0.0; out["zeros inside"] = x
    x = base.copy(); x[0] = 1.0; out["absmax 1"] = x
    out["max float"] = np.array([3.4028235e38, -3.4028235e38, 1.0, 0] * (block // 4), f32)
    return out


# --- the maps -------------------------------------------------------------------------------

def test_maps_have_bitsandbytes_layout():
    s, u = Q.SIGNED8, Q.UNSIGNED8
    assert s.dtype == u.dtype == np.float32 and s.size == u.size == 256
    assert np.all(np.diff(s) > 0) and np.all(np.diff(u) > 0)
    assert s[127] == 0 and s[255] == 1 and s[0] == f32(-0.99296875) and -s[0] < 1
    assert np.array_equal(s[128:255], -s[126::-1])           # symmetric but for 1.0
    assert u[0] == 0 and u[255] == 1 and abs(u[1] - 3.25e-7) < 1e-12
    assert Q.SIGNED4.size == 16 and Q.SIGNED4[7] == 0 and Q.SIGNED4[15] == 1
    assert np.array_equal(Q.UNSIGNED4, np.arange(1, 17, dtype=f32) / 16) and Q.UNSIGNED4[0] > 0


def test_linspace32_is_torchs_fused_form():
    # 9 points: the plain float32 start + step * j rounds twice and differs in one point
    b = Q.linspace32(0.1, 1, 9)
    step = (f32(1) - f32(0.1)) / f32(8)
    plain = np.array([f32(0.1) + step * f32(j) for j in range(4)]
                     + [f32(1) - step * f32(8 - j) for j in range(4, 9)], f32)
    assert b[0] == f32(0.1) and b[-1] == 1
    assert np.sum(b != plain) == 1


# --- against bitsandbytes -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bnb():
    pytest.importorskip("torch", reason="bitsandbytes (and torch, which it needs) not installed")
    F = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed")
    return F


def bnb_quantize(bnb, x, signed):
    import torch
    code = bnb.create_dynamic_map(signed=signed)
    q, state = bnb.quantize_blockwise(torch.from_numpy(np.ascontiguousarray(x, f32)), code=code,
                                      blocksize=256)
    return q.numpy(), state.absmax.numpy(), code


def test_bnb_maps(bnb):
    assert np.array_equal(bits(bnb.create_dynamic_map(signed=True).numpy()), bits(Q.SIGNED8))
    assert np.array_equal(bits(bnb.create_dynamic_map(signed=False).numpy()), bits(Q.UNSIGNED8))
    four = bnb.create_dynamic_map(signed=True, max_exponent_bits=3, total_bits=4).numpy()
    assert np.array_equal(np.unique(four), Q.SIGNED4)    # bitsandbytes pads with 240 zeros


def test_bnb_optimizer_maps(bnb):
    import torch
    import bitsandbytes as B
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = B.optim.AdamW8bit([p])
    p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[p]
    assert np.array_equal(bits(st["qmap1"].numpy()), bits(Q.SIGNED8))     # first moment
    assert np.array_equal(bits(st["qmap2"].numpy()), bits(Q.UNSIGNED8))   # second moment
    assert st["absmax1"].numel() == 4096 // Q.BLOCK8


def test_bnb_adamw8bit_step_stores_reference_codes(bnb):
    # bitsandbytes' CPU step: both moments in float32 torch ops, then quantize_blockwise
    import torch
    import bitsandbytes as B
    g = torch.from_numpy(np.random.default_rng(3).standard_normal(10_000).astype(f32) * 1e-2)
    g[5] = 0
    p = torch.nn.Parameter(torch.ones(10_000))
    opt = B.optim.AdamW8bit([p], lr=1e-3, betas=(0.9, 0.999))
    p.grad = g.clone()
    opt.step()
    st = opt.state[p]
    m = torch.zeros(10_000).mul_(0.9).add_(g, alpha=0.1).numpy()
    v = torch.zeros(10_000).mul_(0.999).addcmul_(g, g, value=0.001).numpy()
    c1, a1 = Q.quantize8(m, Q.SIGNED8)
    c2, a2 = Q.quantize8(v, Q.UNSIGNED8)
    assert np.array_equal(st["state1"].numpy(), c1) and np.array_equal(st["absmax1"].numpy(), a1)
    assert np.array_equal(st["state2"].numpy(), c2) and np.array_equal(st["absmax2"].numpy(), a2)
    assert st["state1"][5] == 131 and st["state2"][5] == 7     # a zero moment is not stored as 0


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("n", LENGTHS)
def test_bnb_codes_random(bnb, rng, n, signed):
    x = random_data(rng, n, positive=not signed)
    q, absmax, code = bnb_quantize(bnb, x, signed)
    qmap = Q.SIGNED8 if signed else Q.UNSIGNED8
    codes, a = Q.quantize8(x, qmap)
    assert np.array_equal(bits(a), bits(absmax))
    assert np.array_equal(codes, q)
    import torch
    d = bnb.dequantize_blockwise(torch.from_numpy(q), absmax=torch.from_numpy(absmax), code=code,
                                 blocksize=256).numpy()
    assert np.array_equal(bits(Q.dequantize8(codes, a, qmap)), bits(d))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bnb_codes_special(bnb, signed):
    qmap = Q.SIGNED8 if signed else Q.UNSIGNED8
    for name, x in special_blocks(256).items():
        q, absmax, _ = bnb_quantize(bnb, x, signed)
        codes, a = Q.quantize8(x, qmap)
        assert np.array_equal(bits(a), bits(absmax)), name
        assert np.array_equal(codes, q), name


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bnb_every_grid_point(bnb, signed):
    # every grid point, in blocks whose absmax is 1 (the grid value 1.0 is the last)
    g = Q.grid_values()
    x = np.concatenate([np.r_[f32(1), blk] for blk in np.split(g[:-1], 257)]).astype(f32)
    q, absmax, _ = bnb_quantize(bnb, x, signed)
    codes, a = Q.quantize8(x, Q.SIGNED8 if signed else Q.UNSIGNED8)
    assert np.array_equal(codes, q) and np.array_equal(bits(a), bits(absmax))


def test_bnb_documented_consequences(bnb):
    x = np.array([1, 0, -0.0, NAN, 2e-5, -2e-5], f32)
    q, a, _ = bnb_quantize(bnb, x, True)
    assert list(q) == [255, 131, 131, 0, 131, 123] and a[0] == 1
    q, a, _ = bnb_quantize(bnb, np.array([1, 0, NAN], f32), False)
    assert list(q) == [255, 7, 0]
    q, a, _ = bnb_quantize(bnb, np.array([NAN, NAN], f32), True)
    assert list(q) == [0, 0] and a[0] == 0


# --- the reference's properties -------------------------------------------------------------

def test_grid_table_is_nearest_of_grid_point():
    g = Q.grid_values().astype(np.float64)
    for qmap in (Q.SIGNED8, Q.UNSIGNED8):
        t = Q.grid_table(qmap)
        d = np.abs(g[:, None] - qmap.astype(np.float64)[None, :])
        best = d.min(axis=1)
        assert np.all(d[np.arange(Q.GRID), t] <= best + 1e-7)


@pytest.mark.parametrize("qmap,bound", [(Q.SIGNED8, 0.9 / 128 + 2 / 65535),
                                        (Q.UNSIGNED8, 0.9 / 256 + 2 / 65535)],
                         ids=["signed", "unsigned"])
def test_roundtrip_error_8bit(rng, qmap, bound):
    x = rng.standard_normal(100_000).astype(f32) * f32(3)
    if qmap is Q.UNSIGNED8:
        x = np.abs(x)
    codes, a = Q.quantize8(x, qmap)
    y = Q.dequantize8(codes, a, qmap)
    scale = np.repeat(a, Q.BLOCK8)[:x.size]
    err = np.abs(y - x) / scale
    assert err.max() <= bound
    big = np.abs(x) >= 0.1 * scale                # the last decade: 64 (128) linear steps
    assert np.all(np.abs(y - x)[big] <= np.abs(x[big]) * 0.08)
    assert np.array_equal(a, Q.block_absmax(x, Q.BLOCK8)) and np.all(np.abs(y) <= scale)


@pytest.mark.parametrize("qmap", [Q.SIGNED4, Q.UNSIGNED4], ids=["signed", "unsigned"])
def test_4bit_codes_are_nearest(rng, qmap):
    x = rng.standard_normal(50_001).astype(f32)
    if qmap is Q.UNSIGNED4:
        x = x * x
    packed, a = Q.quantize4(x, qmap)
    assert packed.size == (x.size + 1) // 2 and a.size == -(-x.size // Q.BLOCK4)
    codes = Q.unpack4(packed, x.size)
    v = (x.reshape(-1) * np.repeat(f32(1) / a, Q.BLOCK4)[:x.size]).astype(f32)
    d = np.abs(v[:, None].astype(np.float64) - qmap.astype(np.float64)[None, :])
    assert np.all(d[np.arange(x.size), codes] <= d.min(axis=1) + 1e-7)
    y = Q.dequantize4(packed, a, qmap, x.size)
    # the largest error: half the widest gap (signed: 0.4375..0.6625, or -1 to -0.8875), or
    # the whole first step below 1/16 (unsigned, no zero)
    gap = 0.1125 if qmap is Q.SIGNED4 else 1 / 16
    assert np.all(np.abs(y - x) <= np.repeat(a, Q.BLOCK4)[:x.size] * (gap + 1e-6))


def test_4bit_ties_nibbles_and_specials():
    m = Q.midpoints(Q.SIGNED4)
    x = np.r_[f32(1), m[:5], f32(0), NAN].astype(f32)      # v = x exactly (absmax 1)
    codes = Q.unpack4(*Q.quantize4(x, Q.SIGNED4)[:1], x.size)
    assert list(codes) == [15, 0, 1, 2, 3, 4, 7, 0]           # a midpoint goes to the lower
    assert Q.pack4([1, 2, 3]).tolist() == [0x12, 0x30]
    assert Q.unpack4(np.array([0xAB], np.uint8), 2).tolist() == [0xA, 0xB]
    p, a = Q.quantize4(np.zeros(5, f32), Q.UNSIGNED4)
    assert a[0] == 0 and p.tolist() == [0, 0, 0]
    # the unsigned map has no zero: a tiny second moment is stored as absmax / 16
    p, a = Q.quantize4(np.array([1, 1e-9], f32), Q.UNSIGNED4)
    assert Q.dequantize4(p, a, Q.UNSIGNED4, 2)[1] == f32(1 / 16)


def test_reference_special_values():
    for name, x in special_blocks(256).items():
        codes, a = Q.quantize8(x, Q.SIGNED8)
        finite = x[np.isfinite(x)]
        if name in ("zeros", "negative zeros", "nans", "zeros and a nan"):
            assert a[0] == 0 and not codes.any(), name
        elif "inf" in name:
            assert a[0] == INF and codes[5] == 0, name
            assert np.all(codes[np.isfinite(x)] == 131), name
        else:
            assert a[0] == np.abs(finite).max(), name
        assert np.all(codes[np.isnan(x)] == 0), name
    assert Q.nbytes(4096, 8) == 4096 + 64 and Q.nbytes(4096, 4) == 2048 + 128


# --- the C functions against the reference --------------------------------------------------

FLAGS = {
    "kernel-flags": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-march=native"],
    "plain-O2": ["-O2"],
}


@pytest.fixture(scope="module", params=sorted(FLAGS))
def capi(request, tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build kernels/_quant.h")
    out = str(tmp_path_factory.mktemp("quant") / "libquant.so")
    cmd = [cc, *FLAGS[request.param], "-shared", "-fPIC", "-I", KERNELS,
           os.path.join(HERE, "_quant_capi.c"), "-o", out]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(out)
    lib.q8.argtypes = lib.q4.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.c_void_p]
    lib.dq8.argtypes = lib.dq4.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_void_p]
    lib.grid_codes_vector.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return lib


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def c_quantize8(lib, x, signed):
    x = np.ascontiguousarray(x, f32)
    codes = np.empty(x.size, np.uint8)
    absmax = np.empty(-(-x.size // Q.BLOCK8), f32)
    lib.q8(_p(x), x.size, int(signed), _p(codes), _p(absmax))
    out = np.empty(x.size, f32)
    lib.dq8(_p(codes), x.size, int(signed), _p(absmax), _p(out))
    return codes, absmax, out


def c_quantize4(lib, x, signed):
    x = np.ascontiguousarray(x, f32)
    packed = np.zeros((x.size + 1) // 2, np.uint8)
    absmax = np.empty(-(-x.size // Q.BLOCK4), f32)
    lib.q4(_p(x), x.size, int(signed), _p(packed), _p(absmax))
    out = np.empty(x.size, f32)
    lib.dq4(_p(packed), x.size, int(signed), _p(absmax), _p(out))
    return packed, absmax, out


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_c_every_grid_index_and_value(capi, signed):
    qmap = Q.SIGNED8 if signed else Q.UNSIGNED8
    g = np.empty(Q.GRID, np.uint8)
    capi.grid_codes(int(signed), _p(g))
    assert np.array_equal(g, Q.grid_table(qmap))
    v = np.empty(256, f32)
    capi.values8(int(signed), _p(v))
    assert np.array_equal(bits(v), bits(qmap))
    v4 = np.empty(16, f32)
    capi.values4(int(signed), _p(v4))
    assert np.array_equal(bits(v4), bits(Q.SIGNED4 if signed else Q.UNSIGNED4))


@pytest.mark.parametrize("capi", ["kernel-flags"], indirect=True)   # the vector path's build
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_c_vector_codes_of_every_grid_index(capi, signed):
    """The AVX-512 path's one-sided table, mirrored (kernels/_quant.h fgd_q8_codes_of_t16, and
    fgd_q8_pack64 of four fgd_q8_dwords_of_t16, the whole blocks' path), gives bitsandbytes'
    code of every one of the 65536 grid indices."""
    g = np.empty(Q.GRID, np.uint8)
    if capi.grid_codes_vector(int(signed), _p(g)) < 0:
        pytest.skip("this CPU has no AVX-512, so the vector path this checks is not built")
    assert np.array_equal(g, Q.grid_table(Q.SIGNED8 if signed else Q.UNSIGNED8))


@pytest.mark.parametrize("capi", ["kernel-flags"], indirect=True)
def test_c_vector_grid_index_without_clamp(capi):
    """fgd_q8_index16 without its clamp (1 / absmax finite) gives the definition's grid index
    for every float within 64 ulps of [-1, 1] (|x / absmax| rounded is within 2^-21 of it): here
    every 61st float of either sign and every float of the top 2^20 below 1 (and 64 above);
    all of them were checked once (0 of 2.1e9 differ, 14 s). ~0.5 s."""
    capi.q8_index_mismatches.restype = ctypes.c_long
    capi.q8_index_mismatches.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                         ctypes.c_int]
    if capi.q8_index_mismatches(0, 16, 1, 1) < 0:
        pytest.skip("this CPU has no AVX-512, so the vector path this checks is not built")
    top = 0x3F800000 + 64
    assert capi.q8_index_mismatches(0, top, 61, 2) == 0
    assert capi.q8_index_mismatches(top - (1 << 20) - 64, top, 1, 2) == 0


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("n", LENGTHS)
def test_c_8bit_equals_reference(capi, rng, n, signed):
    qmap = Q.SIGNED8 if signed else Q.UNSIGNED8
    x = random_data(rng, n, positive=not signed)
    codes, absmax, y = c_quantize8(capi, x, signed)
    rc, ra = Q.quantize8(x, qmap)
    assert np.array_equal(bits(absmax), bits(ra))
    assert np.array_equal(codes, rc)
    assert np.array_equal(bits(y), bits(Q.dequantize8(rc, ra, qmap)))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_c_8bit_grid_points_and_specials(capi, signed):
    qmap = Q.SIGNED8 if signed else Q.UNSIGNED8
    g = Q.grid_values()
    blocks = [np.r_[f32(1), blk] for blk in np.split(g[:-1], 257)]
    blocks += list(special_blocks(256).values())
    x = np.concatenate(blocks).astype(f32)
    codes, absmax, y = c_quantize8(capi, x, signed)
    rc, ra = Q.quantize8(x, qmap)
    assert np.array_equal(codes, rc) and np.array_equal(bits(absmax), bits(ra))
    assert np.array_equal(bits(y), bits(Q.dequantize8(rc, ra, qmap)))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("n", LENGTHS)
def test_c_4bit_equals_reference(capi, rng, n, signed):
    qmap = Q.SIGNED4 if signed else Q.UNSIGNED4
    x = random_data(rng, n, positive=not signed)
    x = np.concatenate([x, *special_blocks(128).values()]) if n == 1000 else x
    packed, absmax, y = c_quantize4(capi, x, signed)
    rp, ra = Q.quantize4(x, qmap)
    assert np.array_equal(bits(absmax), bits(ra))
    assert np.array_equal(packed, rp)
    assert np.array_equal(bits(y), bits(Q.dequantize4(rp, ra, qmap, x.size)))


@pytest.mark.parametrize("capi", ["kernel-flags"], indirect=True)   # the vector path's build
def test_c_4bit_linear_codes_of_every_float(capi):
    """The computed codes of the linear map (ceil(16 v - 1.5), kernels/_quant.h
    fgd_q4_codes16_linear) are the binary search's for every float in [0, 1 + 256 ulp] (v =
    x * (1 / absmax) is within an ulp or two of [-1, 1]; negative v are code 0 either way), every
    257th float of either sign, and near inf, the NaNs, zeros and subnormals with an inv of inf
    (a subnormal absmax), 0 and huge. ~1 s in C."""
    capi.q4_linear_mismatches.restype = ctypes.c_long
    capi.q4_linear_mismatches.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                          ctypes.c_int, ctypes.c_float]
    if capi.q4_linear_mismatches(0, 16, 1, 1, 1.0) < 0:     # -march=native gave no AVX-512
        pytest.skip("this CPU has no AVX-512, so the vector path this checks is not built")
    assert capi.q4_linear_mismatches(0, 0x3F800100, 1, 1, 1.0) == 0
    assert capi.q4_linear_mismatches(0, 0x7FC00100, 257, 2, 1.0) == 0
    for inv in (np.inf, 0.0, 3.0e38):
        assert capi.q4_linear_mismatches(0x7F7FFF00, 0x7FC00100, 1, 2, inv) == 0   # inf, NaNs
        assert capi.q4_linear_mismatches(0, 0x10000, 1, 2, inv) == 0              # 0, subnormals
        assert capi.q4_linear_mismatches(0, 0x7F800000, 4099, 2, inv) == 0        # a sample


def test_header_tables_are_generated_from_the_reference():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_quant_segments",
                                                  os.path.join(KERNELS, "_quant_segments.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with open(os.path.join(KERNELS, "_quant.h")) as f:
        text = f.read()
    start = text.index("\n", text.index("/* ---- BEGIN GENERATED")) + 1
    assert text[start:text.index("/* ---- END GENERATED")].strip() == gen.generated().strip()
