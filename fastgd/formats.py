"""Storage formats: which dtypes an array of a step may have, how each is stored and rounded.

Every rule computes in float32 registers for 16- and 32-bit storage (float64 for float64), and
each array of a step (the param, its grad, each state array, an optional 16-bit copy of a
float32 master param) may be stored in its own format. This module is the one definition of the
formats, their codes in the kernels' tables, and their rounding; the kernels of both backends
and the NumPy reference follow it bit for bit.

    code  format     load to float32                store from float32 (x, bits u)
    0     float32    x                              x
    1     bfloat16   bits << 16 (exact)             NaN: (u >> 16) | 0x40 (quiet, sign kept);
                                                    zero or subnormal x: its sign, 0 (flushed,
                                                    as AVX-512 BF16's VCVTNEPS2BF16 does);
                                                    else round to nearest even:
                                                    (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    2     float16    exact (IEEE half)              IEEE round to nearest even (subnormal
                                                    halves kept; NaN stays a NaN)
    3     float64    (float64 arithmetic; only with every array float64)
    4     bfloat16, stochastic rounding on store (``bf16_stochastic_round``: the bfloat16 param
                     and bfloat16 states): NaN and zero/subnormal as code 1; else (u + r) >> 16
                     with r the high 16 bits of sr_hash(key ^ (i * 0x9E3779B9)) * m mod 2**32,
                     i the element's index in its tensor (mod 2**32), m = role_multiplier(role)
                     for the array's role (its column in the kernel's table; 1 for the param,
                     so its r is mix32(...) >> 16) and key = sr_key(seed, step, index of the
                     tensor): unbiased (E[stored] = x), reproducible, independent of the thread
                     count, a different draw per role. One hash an element serves every role
                     (a multiply each), where a hash per role cost ~10% of the one-thread step.

    5     8-bit block-wise, signed dynamic map (a first moment)      fastgd/quant.py defines
    6     8-bit block-wise, unsigned dynamic map (a second moment)   the maps, codes and values
    7     4-bit block-wise, signed dynamic map (a first moment)      bit for bit (bitsandbytes
    8     4-bit block-wise, linear map without zero (a second moment) 0.50.2's CPU codes for 8 bits)
                     Quantized formats are state formats only: codes (uint8; two 4-bit codes a
                     byte) and one float32 absmax per block (256 elements for 8 bits, 128 for 4),
                     loaded as map[code] * absmax, stored as quant.quantize8/quantize4 give them.

bfloat16 arrays are NumPy arrays of ``ml_dtypes.bfloat16`` (torch.bfloat16 tensors in
fastgd.torch); float16 are ``np.float16`` (torch.float16).
"""
import numpy as np

from . import quant

try:
    import ml_dtypes
    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml-dtypes is a dependency; kept importable without it
    ml_dtypes = None
    bfloat16 = None

F32, BF16, F16, F64, BF16_SR = 0, 1, 2, 3, 4
#: the code of an absent optional array (the 16-bit copy when there are no master weights)
NONE = -1

Q8_SIGNED, Q8_UNSIGNED, Q4_SIGNED, Q4_UNSIGNED = 5, 6, 7, 8
#: the quantized formats: code -> (bits, signed map)
QUANTIZED = {Q8_SIGNED: (8, True), Q8_UNSIGNED: (8, False), Q4_SIGNED: (4, True),
             Q4_UNSIGNED: (4, False)}

NAMES = {F32: "float32", BF16: "bfloat16", F16: "float16", F64: "float64", BF16_SR: "bfloat16",
         Q8_SIGNED: "8-bit signed", Q8_UNSIGNED: "8-bit unsigned", Q4_SIGNED: "4-bit signed",
         Q4_UNSIGNED: "4-bit unsigned"}
#: the formats an array may be stored in, by dtype
CODES = {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(np.float64): F64}
if bfloat16 is not None:
    CODES[bfloat16] = BF16
HALF = (BF16, F16)
ITEMSIZE = {F32: 4, BF16: 2, F16: 2, F64: 8, BF16_SR: 2}


def dtype_of(name):
    """The NumPy dtype of a format given by name, NumPy dtype or torch dtype (``"bfloat16"``,
    ``np.float16``, ``torch.bfloat16``); TypeError if it is not a storage format."""
    text = str(name).replace("torch.", "")
    if text in ("bfloat16", "bf16") and bfloat16 is not None:
        return bfloat16
    try:
        dt = np.dtype(text if isinstance(name, str) or text != str(name) else name)
    except TypeError:
        dt = None
    if dt not in CODES:
        raise TypeError(f"expected a storage format (float32, bfloat16, float16 or float64); "
                        f"got {name!r}")
    return dt


def code_of(dtype):
    """The format code of a NumPy dtype, or None if arrays of it cannot be stepped."""
    return CODES.get(np.dtype(dtype))


# --- the definition of the rounding (the reference and the tests use these) ---------------------

def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def to_bfloat16(x):
    """float32 array -> bfloat16 array, rounded as code 1 says (bitwise what the kernels store)."""
    u = _bits(x)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    tiny = (u & 0x7F800000) == 0
    rne = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16
    out = np.where(nan, (u >> 16) | 0x40, np.where(tiny, (u >> 16) & 0x8000, rne))
    return out.astype(np.uint16).view(bfloat16)


def sr_hash(x):
    """lowbias32 (mix32) without its last step x ^= x >> 16, on uint32 arrays: the hash of an
    element's stochastic rounding, shared by every role of the element."""
    x = np.asarray(x, dtype=np.uint32).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
    return x


def mix32(x):
    """lowbias32 (C. Wellons): a 32-bit integer hash with good avalanche, on uint32 arrays."""
    x = sr_hash(x)
    return x ^ (x >> np.uint32(16))


GOLDEN = 0x9E3779B9


def _mix32(x):
    """mix32 of one Python int (the optimizers call sr_key per tensor and step)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def sr_key(seed, step, index):
    """The key of the stochastic rounding of tensor ``index`` at step ``step`` (uint32): every
    (seed, step, tensor) gets its own stream of random bits."""
    s = _mix32((seed & 0xFFFFFFFF) ^ _mix32(step & 0xFFFFFFFF))
    return _mix32(s ^ _mix32((index * GOLDEN + 1) & 0xFFFFFFFF))


def role_multiplier(role):
    """The odd multiplier that turns an element's hash into role ``role``'s random bits: 1 for
    the param (role 0), (role * GOLDEN) | 1 for the others (a bijection of the uint32 hash, so
    each role's 16 bits stay uniform)."""
    return ((int(role) * GOLDEN) & 0xFFFFFFFF) | 1


def sr_bits(key, n, role=0):
    """The 16 random bits r of elements 0..n-1 of role ``role`` of a tensor with key ``key``
    (uint32 array): the high 16 bits of sr_hash(key ^ (i * GOLDEN)) * role_multiplier(role)
    (mod 2**32). The param's (role 0) are mix32(key ^ (i * GOLDEN)) >> 16: mix32's last step
    leaves its high 16 bits as they are."""
    i = np.arange(n, dtype=np.uint64) * np.uint64(GOLDEN) & np.uint64(0xFFFFFFFF)
    h = sr_hash(np.uint32(key) ^ i.astype(np.uint32))
    with np.errstate(over="ignore"):
        return (h * np.uint32(role_multiplier(role))) >> np.uint32(16)


def to_bfloat16_sr(x, key, role=0):
    """float32 array -> bfloat16 with stochastic rounding (code 4) with the random bits of role
    ``role`` (sr_bits), the element index being the position in ``x`` (one whole tensor, flat)."""
    u = _bits(x).reshape(-1)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    tiny = (u & 0x7F800000) == 0
    with np.errstate(over="ignore"):
        sr = (u + sr_bits(key, u.size, role)) >> 16
    out = np.where(nan, (u >> 16) | 0x40, np.where(tiny, (u >> 16) & 0x8000, sr))
    return out.astype(np.uint16).view(bfloat16).reshape(np.shape(x))


# --- quantized states (codes 5-8; fastgd/quant.py is their definition) -------------------------

def quantized_code(bits, signed):
    """The format code of a quantized state of ``bits`` (8 or 4) on a signed or unsigned map."""
    return {(8, True): Q8_SIGNED, (8, False): Q8_UNSIGNED, (4, True): Q4_SIGNED,
            (4, False): Q4_UNSIGNED}[int(bits), bool(signed)]


def block_of(code):
    """Elements per absmax block of quantized format ``code``."""
    return quant.BLOCK8 if QUANTIZED[code][0] == 8 else quant.BLOCK4


def qmap_of(code):
    """The map (float32 values, sorted) of quantized format ``code``."""
    bits, signed = QUANTIZED[code]
    if bits == 8:
        return quant.SIGNED8 if signed else quant.UNSIGNED8
    return quant.SIGNED4 if signed else quant.UNSIGNED4


def code_bytes(code, n):
    """Bytes of the codes of n elements in quantized format ``code``."""
    return n if QUANTIZED[code][0] == 8 else (n + 1) // 2


def n_blocks(code, n):
    """The number of absmax blocks of n elements in quantized format ``code``."""
    return -(-n // block_of(code))


def dequantize(codes, absmax, code, n):
    """The float32 values of n elements stored as ``codes``/``absmax`` in format ``code``."""
    if QUANTIZED[code][0] == 8:
        return quant.dequantize8(codes, absmax, qmap_of(code))
    return quant.dequantize4(codes, absmax, qmap_of(code), n)


def quantize(values, code):
    """(codes, absmax) of float32 ``values`` in quantized format ``code``."""
    if QUANTIZED[code][0] == 8:
        return quant.quantize8(values, qmap_of(code))
    return quant.quantize4(values, qmap_of(code))


def load(a):
    """An array of any 16/32-bit storage format as float32 (exact); float64 stays float64."""
    return a if a.dtype == np.float64 else a.astype(np.float32)


def store(values, code, key=0, role=0):
    """float32 ``values`` in storage format ``code`` (its rounding, as the kernels store; code 4
    with the random bits of tensor key ``key`` and table column ``role``)."""
    if code == F32:
        return np.asarray(values, dtype=np.float32)
    if code == BF16:
        return to_bfloat16(values)
    if code == BF16_SR:
        return to_bfloat16_sr(values, key, role)
    if code == F16:
        return np.asarray(values, dtype=np.float32).astype(np.float16)
    if code == F64:
        return np.asarray(values, dtype=np.float64)
    raise ValueError(f"unknown format code {code}")
