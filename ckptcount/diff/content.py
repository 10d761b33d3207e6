"""``ckptcount diff --content``: compare the bytes of the tensors both checkpoints hold with the same shape.

Only the tensors' own byte spans are read, where ``--verify-ties`` reads them (:func:`ckptcount.verify.spans.opener` and
:func:`ckptcount.verify.spans.locate_tensor`: safetensors after the header, PyTorch zip storages from their stored entries,
GGUF in its data section; locally or by HTTP range requests), in blocks of ``block_bytes``, and at most ``budget``
bytes in all: a pair that would take the reads past the budget is not compared (and says so). Each side's bytes are
hashed (sha256, reported); blocks are compared as bytes, so the first differing element is found exactly.

Same dtype: equal means identical bytes. With numpy, differing float blocks (F64, F32, F16, BF16, F8) are decoded
and the largest absolute difference is reported. Different dtypes (a bf16 conversion): with numpy both sides are
decoded to float64 and compared by value (equal means every value equal; max |diff| is the conversion's rounding);
without numpy such a pair is not compared. numpy is imported only here, only when asked.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

from .compare import Content, Diff, TensorContent, alignment, natural
from ..errors import CkptError
from ..records import BUFFER, DTYPE_BITS, Report
from ..verify.backends import DECODABLE, VerifyError, _Numpy
from ..verify.spans import Located, _read_into, locate_tensor, opener

DEFAULT_BUDGET = 1 << 30  # bytes read in all, both sides together
BLOCK_BYTES = 8 << 20  # bytes of one side read at once


def pairs(a: Report, b: Report, diff: Diff) -> list[tuple[str, str]]:
    """(A's name, B's name) of every tensor both hold with the same shape, in name order (buffers too, unless
    ``--ignore buffers``)."""
    al = alignment(a, b)
    kinds_b = {c.tensor.name: c.kind for c in b.classified}
    kinds_a = {c.tensor.name: c.kind for c in a.classified}
    ta = {al.key_a(t.name): t for t in a.checkpoint.tensors}
    tb = {al.key_b(t.name): t for t in b.checkpoint.tensors}
    out = []
    for key in sorted(ta.keys() & tb.keys(), key=natural):
        x, y = ta[key], tb[key]
        if x.shape != y.shape:
            continue
        if "buffers" in diff.ignore and BUFFER in (kinds_a.get(x.name), kinds_b.get(y.name)):
            continue
        out.append((x.name, y.name))
    return out


def compare_content(
    a: Report,
    b: Report,
    diff: Diff,
    *,
    budget: int = DEFAULT_BUDGET,
    block_bytes: int = BLOCK_BYTES,
    token: str | None = None,
    open_a=None,
    open_b=None,
) -> Diff:
    """``diff`` with :class:`Content` set: every same-shaped pair compared by bytes, within ``budget``."""
    try:
        engine = _Numpy()
    except VerifyError:
        engine = None  # no numpy: bytes and hashes only
    open_a = open_a or opener(a.checkpoint, token)
    open_b = open_b or opener(b.checkpoint, token)
    files_a = {f.path: f for f in a.checkpoint.files}
    files_b = {f.path: f for f in b.checkpoint.files}
    tensors_a = {t.name: t for t in a.checkpoint.tensors}
    tensors_b = {t.name: t for t in b.checkpoint.tensors}
    left = budget
    total = 0
    results = []
    for na, nb in pairs(a, b, diff):
        ta, tb = tensors_a[na], tensors_b[nb]
        fa, fb = files_a[ta.file], files_b[tb.file]
        if fa.header_only or fb.header_only:
            results.append(TensorContent(na, nb, None, skipped="header only: no tensor data"))
            continue
        if ta.dtype != tb.dtype and (engine is None or not {ta.dtype, tb.dtype} <= DECODABLE):
            why = "dtypes differ: comparing values needs numpy" if engine is None else f"dtypes differ and {ta.dtype} or {tb.dtype} is not decoded"
            results.append(TensorContent(na, nb, None, skipped=why))
            continue
        cost = ta.nbytes + tb.nbytes
        if cost > left:
            results.append(TensorContent(na, nb, None, skipped="over the --budget"))
            continue
        try:
            la = locate_tensor(fa, ta, open_a)
            lb = locate_tensor(fb, tb, open_b)
            reason = la if isinstance(la, str) else lb if isinstance(lb, str) else None
            if reason is not None:
                results.append(TensorContent(na, nb, None, skipped=f"not readable: {reason}"))
                continue
            r = compare_pair(la, lb, engine=engine, block_bytes=block_bytes)
        except CkptError as e:
            results.append(TensorContent(na, nb, None, skipped=f"read failed: {e}"))
            continue
        left -= r.bytes_read
        total += r.bytes_read
        results.append(r)
    return replace(diff, content=Content(budget=budget, bytes_read=total, tensors=tuple(results)))


def _first_difference(x: memoryview, y: memoryview) -> int:
    """The first index where two equal-length, unequal byte views differ (bisection: each step one memcmp)."""
    lo, hi = 0, len(x)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x[lo:mid] != y[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo


def compare_pair(a: Located, b: Located, *, engine: _Numpy | None, block_bytes: int = BLOCK_BYTES) -> TensorContent:
    """Read both tensors block by block; hash each, find the first difference, and the largest |a - b| (numpy)."""
    ta, tb = a.tensor, b.tensor
    ha, hb = hashlib.sha256(), hashlib.sha256()
    same_dtype = ta.dtype == tb.dtype
    bits_a = DTYPE_BITS.get(ta.dtype)
    bits_b = DTYPE_BITS.get(tb.dtype)
    decodable = engine is not None and ta.dtype in DECODABLE and tb.dtype in DECODABLE
    if same_dtype:  # bytes in step: blocks of equal length on both sides (any layout, block-quantized included)
        step_a = step_b = max(1, block_bytes)
        if bits_a is not None and bits_a % 8 == 0:
            step_a = step_b = max(bits_a // 8, block_bytes - block_bytes % (bits_a // 8))
        total_a = total_b = ta.nbytes
    else:  # elements in step: both decoded (checked by the caller)
        ia, ib = bits_a // 8, bits_b // 8
        n = max(1, block_bytes // max(ia, ib))
        step_a, step_b = n * ia, n * ib
        total_a, total_b = ta.nbytes, tb.nbytes
    buf_a, buf_b = bytearray(min(step_a, total_a)), bytearray(min(step_b, total_b))
    first = None
    maxdiff = 0.0 if decodable else None
    equal = True
    read = 0
    off_a = off_b = 0
    while off_a < total_a:
        na, nb = min(step_a, total_a - off_a), min(step_b, total_b - off_b)
        va, vb = memoryview(buf_a)[:na], memoryview(buf_b)[:nb]
        read += _read_into(a.source, a.offset + off_a, va) + _read_into(b.source, b.offset + off_b, vb)
        ha.update(va)
        hb.update(vb)
        if same_dtype:
            if va != vb:
                if first is None:
                    k = _first_difference(va, vb)
                    first = (off_a + k) * 8 // bits_a if bits_a is not None else off_a + k
                equal = False
                if decodable:
                    maxdiff = _maxdiff(engine, va, ta.dtype, vb, tb.dtype, maxdiff)
        else:
            np = engine.np
            x, y = engine.decode(va, ta.dtype), engine.decode(vb, tb.dtype)
            unequal = np.flatnonzero((x != y) & ~(np.isnan(x) & np.isnan(y)))
            if unequal.size:
                equal = False
                if first is None:
                    first = off_a // ia + int(unequal[0])
            maxdiff = _maxdiff(engine, va, ta.dtype, vb, tb.dtype, maxdiff, x, y)
        off_a += na
        off_b += nb
    if maxdiff is not None and equal:
        maxdiff = 0.0
    return TensorContent(
        ta.name, tb.name, equal, bytes_read=read, first_difference=first,
        max_abs_diff=maxdiff if maxdiff is None or math.isfinite(maxdiff) else None,  # NaN or inf: JSON has neither
        sha256_a=ha.hexdigest(), sha256_b=hb.hexdigest(),
    )


def _maxdiff(engine: _Numpy, va, dtype_a: str, vb, dtype_b: str, so_far: float, x=None, y=None) -> float:
    """The largest |a - b| of one block so far, NaN where only one side is NaN (positions NaN on both are skipped)."""
    np = engine.np
    x = engine.decode(va, dtype_a) if x is None else x
    y = engine.decode(vb, dtype_b) if y is None else y
    both_nan = np.isnan(x) & np.isnan(y)
    with np.errstate(invalid="ignore"):
        d = np.abs(x - y)
    d[both_nan] = 0.0
    if np.isnan(d).any():
        return math.nan
    return max(so_far, float(d.max())) if d.size else so_far
