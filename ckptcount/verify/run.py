"""Verify ties by content: read only the token embedding and output head (and other tied pairs) and compare them.

Everything before this module reads headers only. Here, on request (``--verify-ties``), the byte spans of the tensors
involved are read through the same :class:`ByteSource` interface (a local file or an HTTP range reader: only
``source.read(offset, length)`` is used; a local file is read with ``os.preadv`` straight into the block), in row
blocks, and reduced chunk by chunk to float64 moments merged with Chan's parallel formulas, so host memory stays within
one budget (``block_bytes``) whatever the vocabulary size. For each pair:

* Pearson r and the largest absolute difference, in the head's orientation: a head stored ``[d, V]`` (GPT-2 Conv1D
  style, or any transposed export) is compared element for element with the ``[V, d]`` embedding it would equal;
* whether the stored bytes are identical (same dtype, same bits, element for element in that orientation);
* mean, std, min and max of each tensor.

A head that is not stored but tied by the config is one matrix: the tie is structural (r = 1 by construction) and only
the stored tensor's statistics are computed. Safetensors, PyTorch (zip and legacy) and GGUF files are read, each at the
offsets its reader recorded (:func:`data_offset`).

Backends: torch on ``cuda`` when available (blocks read into pinned host memory, copied to the GPU), else numpy on
the CPU (faster there than torch's CPU ops; torch on the CPU with ``backend="torch"``). Both decode F32, F16, BF16, F64
and the five F8 variants and give the same numbers (to ~1e-12). docs/verify.md says how the CPU path is made fast.
torch and numpy are imported inside functions only: the counting path never imports them.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Protocol

from ..analysis.classify import component_of
from ..analysis.config import tie_setting
from ..errors import CkptError, ReadError
from ..records import (
    BUFFER,
    DTYPE_BITS,
    OUTPUT_HEAD,
    TOKEN_EMBEDDING,
    ContentCheck,
    FileRecord,
    Finding,
    Report,
    TensorRecord,
    TieGroup,
    Verification,
)
from ..formats.safetensors import ByteSource
from ..sources.files import LocalFile, cache_snapshot, inside

DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024  # host memory of one comparison: raw block of both tensors + work arrays + bodies
READ_CHUNK = 8 * 1024 * 1024  # one read request at most this long (parallel requests for remote sources)
MIN_PIECE = 256 * 1024  # remote pieces shrink with the budget (bodies in flight count against it), down to this
CHUNK = 1 << 16  # elements per CPU reduction step: float64 work arrays of 1.75 MiB per thread, cache-resident
COMPUTE_THREADS = 1  # threads reducing chunks: 2 were slower than 1 on a 2-CPU machine (~40 short numpy calls per chunk
# hand the GIL back and forth) for 1.7x the CPU time; the other threads read (one long preadv each, GIL released)
TORCH_CHUNK = 1 << 15  # torch's at::internal::GRAIN_SIZE: ops on at most this many elements stay on the calling thread
DOT = 8192  # elements per BLAS dot: OpenBLAS splits a ddot over 10,000 elements across threads, 4-20x slower when busy
NEAR_COPY_R = 0.99
HEAD_WEIGHTS = ("lm_head.weight", "embed_out.weight", "output.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight")

# safetensors dtype -> torch dtype attribute. Every float dtype of 8 bits or more that a checkpoint holds in practice.
TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
DECODABLE = frozenset(TORCH_DTYPES)


class VerifyError(CkptError):
    """Content verification cannot run as asked (no torch for --device cuda, no CUDA device, no numpy)."""

    kind = "verify-error"


# --------------------------------------------------------------------------------------------------------------------
# fp8 decoding, written from the formats' definitions (OCP FP8, and the FNUZ variants of Graphcore/AMD), pure Python.


def fp8_values(dtype: str) -> list[float]:
    """The 256 float values of an 8-bit float format, indexed by the byte. NaN codes decode to NaN."""
    out = []
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        if dtype == "F8_E8M0":  # unsigned power of two, 0xFF is NaN
            out.append(math.nan if b == 0xFF else 2.0 ** (b - 127))
            continue
        if dtype in ("F8_E4M3", "F8_E4M3FNUZ"):
            e, m, mbits, bias = (b >> 3) & 0xF, b & 0x7, 3, 7 if dtype == "F8_E4M3" else 8
        elif dtype in ("F8_E5M2", "F8_E5M2FNUZ"):
            e, m, mbits, bias = (b >> 2) & 0x1F, b & 0x3, 2, 15 if dtype == "F8_E5M2" else 16
        else:
            raise ValueError(dtype)
        if dtype.endswith("FNUZ") and b == 0x80:  # no negative zero: its code is the one NaN
            out.append(math.nan)
            continue
        if dtype == "F8_E4M3" and e == 0xF and m == 0x7:  # e4m3fn: no infinities, S.1111.111 is NaN
            out.append(math.nan)
            continue
        if dtype == "F8_E5M2" and e == 0x1F:  # IEEE-like
            out.append(sign * math.inf if m == 0 else math.nan)
            continue
        if e == 0:
            out.append(sign * m * 2.0 ** (1 - bias - mbits))
        else:
            out.append(sign * (1 + m / 2**mbits) * 2.0 ** (e - bias))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Backends: decode raw little-endian bytes to float64 and reduce a block to moments.


@dataclass
class _Moments:
    """Running moments of one tensor (and, for pairs, the co-moment), merged block by block (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def merge(self, n: int, mean: float, m2: float, lo: float, hi: float) -> float:
        """Fold in a block; returns the delta of means times nb*na/n, needed for the co-moment."""
        if n == 0:
            return 0.0
        na, total = self.n, self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * na * n / total
        self.n = total
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        return delta

    def summary(self) -> dict:
        finite = math.isfinite(self.mean) and math.isfinite(self.m2)
        return {
            "mean": self.mean if finite else None,
            "std": math.sqrt(self.m2 / self.n) if finite and self.n else None,
            "min": self.lo if math.isfinite(self.lo) else None,
            "max": self.hi if math.isfinite(self.hi) else None,
        }


class _Numpy:
    """numpy on the CPU. A chunk of CHUNK elements is decoded into per-thread float64 work arrays (reused), reduced
    there in place, and summed with BLAS dot products of at most DOT elements (exact float64 products)."""

    name = "numpy"
    device = "cpu"
    cuda = False
    torch_missing = False  # set by resolve(): the CLI then says what to install for the GPU

    def __init__(self) -> None:
        try:
            import numpy as np
        except ImportError:
            raise VerifyError("--verify-ties", "needs numpy (CPU) or torch (CPU or GPU): pip install 'ckptcount[torch]'") from None
        self.np = np
        self.chunk = CHUNK
        self.work_bytes = CHUNK * (2 * 8 + 8 + 4)  # X [2, CHUNK] float64, T [CHUNK] float64, U [CHUNK] uint32 (bf16)
        self._luts = {dtype: np.array(fp8_values(dtype), dtype=np.float64) for dtype in DECODABLE if dtype.startswith("F8")}

    def host_buffer(self, n: int) -> memoryview:
        return memoryview(bytearray(n))

    def host_bytes(self, n: int) -> int:
        """Host memory that ``host_buffer(n)`` takes."""
        return n

    def release(self) -> None:
        """Nothing to release: the block buffers are garbage once compare() drops them."""

    def work(self, n: int):
        np = self.np
        return (np.empty((2, n), dtype=np.float64), np.empty(n, dtype=np.float64), np.empty(n, dtype=np.uint32))

    def decode(self, raw, dtype: str, out=None, work=None):
        """float64 values of little-endian ``raw``, written into ``out`` (allocated when not given): one pass, no copy of
        ``raw`` (np.frombuffer views it)."""
        np = self.np
        n = len(raw) * 8 // DTYPE_BITS[dtype]
        out = np.empty(n, dtype=np.float64) if out is None else out[:n]
        if dtype in ("F64", "F32", "F16"):
            np.copyto(out, np.frombuffer(raw, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype]))
        elif dtype == "BF16":  # the high half of an IEEE float32
            u = np.empty(n, dtype=np.uint32) if work is None else work[2][:n]
            np.copyto(u, np.frombuffer(raw, dtype="<u2"))
            u <<= 16
            np.copyto(out, u.view(np.float32))
        else:
            np.take(self._luts[dtype], np.frombuffer(raw, dtype=np.uint8), out=out)
        return out

    def _dots(self, x, y):
        """sum(x*x), sum(y*y), sum(x*y) in float64: rows of DOT elements as one batched matmul per product (one call,
        each row a BLAS product short enough to stay on this thread), the rest with np.dot."""
        np = self.np
        full = x.size - x.size % DOT
        xs = x[:full].reshape(-1, 1, DOT)
        tail = slice(full, x.size)

        def total(p, q, p_tail, q_tail) -> float:
            return float(np.matmul(p, q.transpose(0, 2, 1)).sum()) + float(np.dot(p_tail, q_tail))

        sxx = total(xs, xs, x[tail], x[tail])
        if y is None:
            return sxx, 0.0, 0.0
        ys = y[:full].reshape(-1, 1, DOT)
        return sxx, total(ys, ys, y[tail], y[tail]), total(xs, ys, x[tail], y[tail])

    def _extremes(self, raw, dtype, x) -> tuple[float, float]:
        """min and max: on the stored float32 values when they are float32 (exact, half the bytes), else on ``x``."""
        if dtype == "F32":
            x = self.np.frombuffer(raw, dtype="<f4")
        return float(x.min()), float(x.max())

    def single(self, raw, dtype, work=None):
        work = work or self.work(len(raw) * 8 // DTYPE_BITS[dtype])
        x = self.decode(raw, dtype, work[0][0], work)
        n = x.size
        lo, hi = float(x.min()), float(x.max())
        mean = float(x.sum()) / n
        x -= mean
        return n, mean, self._dots(x, None)[0], lo, hi

    def pair(self, raw_a, dtype_a, raw_b, dtype_b, work=None):
        """Moments of one chunk of a and b, already in the same element order."""
        np = self.np
        work = work or self.work(len(raw_a) * 8 // DTYPE_BITS[dtype_a])
        x = self.decode(raw_a, dtype_a, work[0][0], work)
        y = self.decode(raw_b, dtype_b, work[0][1], work)
        n = x.size
        t = work[1][:n]
        stats = self._extremes(raw_a, dtype_a, x) + self._extremes(raw_b, dtype_b, y)
        np.subtract(x, y, out=t)
        np.abs(t, out=t)
        maxdiff = float(t.max())
        mx, my = float(x.sum()) / n, float(y.sum()) / n
        x -= mx
        y -= my
        sxx, syy, sxy = self._dots(x, y)
        return n, mx, my, sxx, syy, sxy, maxdiff, stats

    def same_bytes(self, raw_a, raw_b) -> bool:
        np = self.np
        kind = "<u8" if len(raw_a) % 8 == 0 else np.uint8
        return bool(np.array_equal(np.frombuffer(raw_a, dtype=kind), np.frombuffer(raw_b, dtype=kind)))

    def transpose_bytes(self, raw, out, rows: int, cols: int, size: int) -> None:
        """``raw`` holds a [cols, rows] tile of ``size``-byte elements; write it to ``out`` in [rows, cols] order."""
        np = self.np
        dst = np.frombuffer(out, dtype=np.uint8, count=rows * cols * size).reshape(rows, cols, size)
        np.copyto(dst, np.frombuffer(raw, dtype=np.uint8).reshape(cols, rows, size).transpose(1, 0, 2))


class _Torch:
    """torch on the CPU (same chunked scheme as numpy, in torch ops) or on a GPU: a whole block per step, read straight
    into pinned host memory and copied to the device asynchronously."""

    name = "torch"

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.startswith("cuda")
        # the GPU takes a whole block per step; the CPU, steps of TORCH_CHUNK elements, each op on one row of at most
        # that many, so torch's intra-op thread pool never splits them (it would fight our threads: 50x slower, loaded)
        self.chunk = 1 << 62 if self.cuda else TORCH_CHUNK
        self.work_bytes = 0 if self.cuda else self.chunk * (2 * 8 + 8)  # host memory per computing thread
        self._pinned: list = []  # pinned host blocks: alive as long as the engine

    def host_buffer(self, n: int) -> memoryview:
        if not self.cuda or n == 0:
            return memoryview(bytearray(n))
        import ctypes

        torch = self.torch
        pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        self._pinned.append(pinned)
        return memoryview((ctypes.c_char * n).from_address(pinned.data_ptr())).cast("B")

    def host_bytes(self, n: int) -> int:
        """Host memory that ``host_buffer(n)`` takes: torch's pinned-memory allocator rounds a block up to a power of
        two (a 10 MiB block takes 16 MiB; measured on an H100 in docs/verify.md)."""
        return 1 << (n - 1).bit_length() if self.cuda and n > 0 else n

    def release(self) -> None:
        """Free the pinned blocks of the last compare(), once no copy from them can still be in flight."""
        if self._pinned:
            self.torch.cuda.synchronize(self.device)
            self._pinned.clear()

    def work(self, n: int):
        torch = self.torch
        if self.cuda:
            return {}  # grown on the device on first use (see _scratch)
        return {"X": torch.empty((2, n), dtype=torch.float64), "T": torch.empty(n, dtype=torch.float64)}

    def _scratch(self, work, n: int):
        torch = self.torch
        if "X" not in work or work["X"].shape[1] < n:
            work["X"] = torch.empty((2, n), dtype=torch.float64, device=self.device)
            work["T"] = torch.empty(n, dtype=torch.float64, device=self.device)
        return work["X"], work["T"]

    def _typed(self, raw, dtype: str):
        """``raw`` as a tensor of its dtype: a view of the host bytes (CPU), or its asynchronous copy on the GPU."""
        torch = self.torch
        host = torch.frombuffer(raw, dtype=torch.uint8)
        if self.cuda:
            host = host.to(self.device, non_blocking=True)  # pinned source: asynchronous; synchronised by .tolist()
        return host.view(getattr(torch, TORCH_DTYPES[dtype]))

    def decode(self, raw, dtype: str, out=None, work=None):
        src = self._typed(raw, dtype)
        if out is None:
            return src.to(self.torch.float64)
        out = out[: src.numel()]
        out.copy_(src)
        return out

    def single(self, raw, dtype, work=None):
        torch = self.torch
        work = work if work is not None else {}
        n = len(raw) * 8 // DTYPE_BITS[dtype]
        x = self.decode(raw, dtype, self._scratch(work, n)[0][0])
        lo, hi = torch.aminmax(x)
        mean = x.sum() / n
        x.sub_(mean)
        t = self._scratch(work, n)[1][:n]
        vals = torch.stack([mean, torch.mul(x, x, out=t).sum(), lo, hi]).tolist()
        return n, vals[0], vals[1], vals[2], vals[3]

    def pair(self, raw_a, dtype_a, raw_b, dtype_b, work=None):
        torch = self.torch
        work = work if work is not None else {}
        n = len(raw_a) * 8 // DTYPE_BITS[dtype_a]
        xy, t = self._scratch(work, n)
        xy = xy[:, :n]
        t = t[:n]
        x = self.decode(raw_a, dtype_a, xy[0])
        y = self.decode(raw_b, dtype_b, xy[1])
        xlo, xhi = torch.aminmax(x)
        ylo, yhi = torch.aminmax(y)
        torch.sub(x, y, out=t)
        maxdiff = t.abs_().max()
        mx, my = x.sum() / n, y.sum() / n
        x.sub_(mx)
        y.sub_(my)
        sxx, syy, sxy = (torch.mul(p, q, out=t).sum() for p, q in ((x, x), (y, y), (x, y)))  # no BLAS: see chunk
        v = torch.stack([mx, my, sxx, syy, sxy, maxdiff, xlo, xhi, ylo, yhi]).tolist()
        return n, v[0], v[1], v[2], v[3], v[4], v[5], (v[6], v[7], v[8], v[9])

    def same_bytes(self, raw_a, raw_b) -> bool:
        torch = self.torch
        kind = torch.int64 if len(raw_a) % 8 == 0 else torch.uint8  # fewer elements: under the intra-op grain size
        return bool(torch.equal(torch.frombuffer(raw_a, dtype=kind), torch.frombuffer(raw_b, dtype=kind)))

    def transpose_bytes(self, raw, out, rows: int, cols: int, size: int) -> None:
        torch = self.torch
        src = torch.frombuffer(raw, dtype=torch.uint8).reshape(cols, rows, size)
        dst = torch.frombuffer(out, dtype=torch.uint8, count=rows * cols * size).reshape(rows, cols, size)
        dst.copy_(src.permute(1, 0, 2))


def resolve(device: str = "auto", backend: str | None = None) -> _Numpy | _Torch:
    """The backend that will compute: torch on ``cuda`` when present (``auto``) or asked for, else numpy on the CPU
    (torch on the CPU with ``backend="torch"``, or when numpy is missing)."""
    if backend not in (None, "torch", "numpy"):
        raise VerifyError("--verify-ties", f"unknown backend {backend!r}: torch or numpy")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise VerifyError("--device", f"unknown device {device!r}: auto, cpu or cuda")
    torch = None
    if backend == "torch" or device.startswith("cuda") or (backend is None and device == "auto" and _gpu_possible()):
        torch = _import_torch()
        if torch is None and backend == "torch":
            raise VerifyError("--verify-ties", "torch is not installed: pip install 'ckptcount[torch]'")
    if device.startswith("cuda"):
        if torch is None:
            raise VerifyError("--device", f"{device} needs torch built with CUDA: pip install 'ckptcount[torch]' (a CUDA wheel of torch)")
        if not torch.cuda.is_available():
            raise VerifyError("--device", f"{device}: torch {torch.__version__} sees no CUDA device")
        return _Torch(device)
    if torch is not None and (backend == "torch" or (device == "auto" and torch.cuda.is_available())):
        return _Torch("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    # on the CPU, numpy is the faster of the two (scripts/bench_verify.py: fewer, larger vectorised steps than torch
    # can take without its intra-op threads); torch on the CPU only where numpy is missing or when asked for
    try:
        engine = _Numpy()
    except VerifyError:
        if backend == "numpy" or (torch or _import_torch()) is None:
            raise
        return _Torch("cpu")
    if backend is None and torch is None:
        import importlib.util

        engine.torch_missing = importlib.util.find_spec("torch") is None
    return engine


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _gpu_possible() -> bool:
    """False only where no GPU can be there: Linux without NVIDIA or ROCm device nodes. Spares ``auto`` the import of
    torch (~2-3 s and ~250 MB of RSS) where it would compute on the CPU, where numpy is the default anyway."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg"))


# --------------------------------------------------------------------------------------------------------------------
# Reading spans.


class Progress(Protocol):
    def start(self, total: int, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Located:
    """A stored tensor and where its bytes are: ``source.read(offset, tensor.nbytes)``."""

    tensor: TensorRecord
    source: ByteSource
    offset: int


_count_lock = threading.Lock()
_PREADV = hasattr(os, "preadv")


def _read_into(source: ByteSource, offset: int, view: memoryview) -> int:
    """Fill ``view`` with ``len(view)`` bytes of ``source`` from ``offset``.

    A local file is read with ``os.preadv`` straight into ``view`` (no intermediate ``bytes``) and its ``bytes_read``
    counter advanced; any other source through ``source.read`` (one request), copied in. A short read is an error.
    """
    n = len(view)
    if isinstance(source, LocalFile):
        got = 0
        try:
            fd = os.open(source.path, os.O_RDONLY)
            try:
                while got < n:
                    if _PREADV:
                        k = os.preadv(fd, [view[got:]], offset + got)
                    else:  # no preadv (some platforms): a temporary bytes, copied in
                        data = os.pread(fd, min(n - got, READ_CHUNK), offset + got)
                        k = len(data)
                        view[got : got + k] = data
                    if k == 0:
                        break
                    got += k
            finally:
                os.close(fd)
        except OSError as e:
            raise ReadError(source.name, e.strerror or str(e)) from None
        with _count_lock:
            source.bytes_read += got
            source.reads += 1
    else:
        data = source.read(offset, n)
        got = min(len(data), n)
        view[:got] = data[:got]
        del data
    if got != n:
        raise ReadError(source.name, f"file ended after {got} of {n} bytes at offset {offset}")
    return n


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _rows_cols(t: TensorRecord) -> tuple[int, int]:
    if not t.shape:
        return 1, 1
    rows = t.shape[0]
    return rows, (t.numel // rows if rows else 0)


def _split(n: int, parts: int, align: int) -> list[tuple[int, int]]:
    """[0, n) in at most ``parts`` contiguous ranges whose inner boundaries are multiples of ``align``."""
    units = -(-n // align)
    per = -(-units // max(1, parts))
    return [(k * align, min(n, (k + per) * align)) for k in range(0, units, per)]


def compare(
    a: Located,
    b: Located | None,
    *,
    engine: _Numpy | _Torch,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ContentCheck:
    """Compare ``b`` (a head, in its stored orientation) with ``a`` (the embedding), or describe ``a`` alone.

    Streams row blocks of ``a`` with the matching rows of ``b`` (the matching column tile, read row by row, when ``b``
    is stored transposed). ``block_bytes`` bounds the host memory of the whole computation: the raw bytes of one block
    of both tensors (read in place, in parallel pieces), the per-thread float64 work arrays, and for remote sources the
    response bodies in flight. ``workers`` threads (default: up to 4, one per CPU) read pieces in parallel and, with
    more than one, read the next block while this one is reduced (on COMPUTE_THREADS threads). Chunk moments are merged
    in a fixed order, so the numbers depend only on the block size (two buffer sets halve it), by float64 rounding.
    """
    ta, tb = a.tensor, b.tensor if b else None
    names = (ta.name,) + ((tb.name,) if tb else ())
    base = dict(names=names, device=engine.device, backend=engine.name)
    for t in (ta, tb):
        if t is not None and t.dtype not in DECODABLE:
            return ContentCheck(orientation="none", skipped=f"{t.name} is {t.dtype}: only F64, F32, F16, BF16 and F8 are decoded", **base)
    if ta.numel == 0:
        return ContentCheck(orientation="none", skipped=f"{ta.name} has no elements", **base)
    if tb is None:
        orientation = "structural"
    elif ta.shape == tb.shape:
        orientation = "same"
    elif len(ta.shape) == 2 and tb.shape == ta.shape[::-1]:
        orientation = "transposed"
    else:
        return ContentCheck(orientation="none", skipped=f"shapes {list(ta.shape)} and {list(tb.shape)} do not line up", **base)

    rows, cols = _rows_cols(ta)
    ia = DTYPE_BITS[ta.dtype] // 8
    ib = DTYPE_BITS[tb.dtype] // 8 if tb else 0
    transposed = orientation == "transposed"
    threads = workers if workers is not None else _default_threads()
    sources = [a.source] + ([b.source] if b else [])
    remote = not all(isinstance(s, LocalFile) for s in sources)
    # the memory budget: per-thread work arrays, remote bodies in flight (a piece, its copy while it is joined, and
    # allocator slack), then whole rows of raw bytes of both tensors (twice the head's when it is re-ordered) for the
    # rest
    compute_threads = 1 if engine.cuda else max(1, min(threads, COMPUTE_THREADS))
    piece_cap = READ_CHUNK
    if remote:
        piece_cap = min(READ_CHUNK, max(MIN_PIECE, block_bytes // (8 * threads)))
    inflight = 3 * threads * piece_cap if remote else 0
    per_elem = compute_threads * engine.work_bytes // engine.chunk  # work bytes per element of a chunk, all threads
    room = block_bytes - inflight

    def rows_per_block(sets: int) -> int:
        per_row = sets * cols * (ia + ib * (2 if transposed else 1))
        step = (room - engine.chunk * per_elem) // max(1, per_row)
        if step * cols < engine.chunk:  # a small budget: chunks as long as a block, work arrays to match
            step = room // max(1, per_row + cols * per_elem)
        return min(max(1, step), rows)

    def host_cost(step: int, sets: int) -> int:
        """Bytes of the buffer sets as the engine allocates them (pinned blocks are rounded up: see host_bytes)."""
        sizes = [step * cols * ia] + [step * cols * ib] * ((1 if tb else 0) + (1 if transposed else 0))
        return sets * sum(engine.host_bytes(n) for n in sizes)

    # with threads and more than one block, two buffer sets (each half the room): the next block is read while this
    # one is reduced
    step = rows_per_block(1)
    sets = 2 if threads > 1 and step < rows else 1
    if sets == 2:
        step = rows_per_block(2)
    limit = room - min(engine.chunk, step * cols) * per_elem  # what the buffers were given: the rest is work arrays
    if host_cost(step, sets) > limit:  # an engine that rounds its blocks up: the largest step whose blocks still fit
        lo, hi = 1, step
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if host_cost(mid, sets) <= limit else (lo, mid - 1)
        step = lo
    chunk = min(engine.chunk, step * cols)
    buffers = [
        (engine.host_buffer(step * cols * ia), engine.host_buffer(step * cols * ib) if tb else None,
         engine.host_buffer(step * cols * ib) if transposed else None)
        for _ in range(sets)
    ]
    works = [engine.work(chunk) for _ in range(compute_threads)]
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    prefetch = ThreadPoolExecutor(1) if sets == 2 else None
    run = pool.map if pool is not None else map
    if progress is not None:
        progress.start(ta.nbytes + (tb.nbytes if tb else 0), " vs ".join(names))
    bytes_read = 0

    def read(jobs: list[tuple[ByteSource, int, int, memoryview]]) -> None:
        """Read (source, offset, length, destination) spans, cut into pieces spread over the threads."""
        nonlocal bytes_read
        total = sum(n for _, _, n, _ in jobs)
        piece = max(1, min(piece_cap, -(-total // threads)))
        pieces = [(src, off + k, view[k : min(n, k + piece)]) for src, off, n, view in jobs for k in range(0, n, piece)]
        batches = [pieces[lo:hi] for lo, hi in _split(len(pieces), threads, 1)]
        for got in run(lambda batch: sum(_read_into(*p) for p in batch), batches):
            bytes_read += got
            if progress is not None:
                progress.advance(got)

    def reduce_range(job: tuple[int, int, int, memoryview, memoryview | None]) -> tuple[list, bool]:
        """Chunk moments of elements [lo, hi) of a block (raw_a, raw_b), and whether their bytes are equal."""
        k0, lo, hi, raw_a, raw_b = job
        work = works[k0]
        out = []
        same = check_same
        for k in range(lo, hi, chunk):
            m = min(hi, k + chunk)
            ra = raw_a[k * ia : m * ia]
            if raw_b is None:
                out.append(engine.single(ra, ta.dtype, work))
                continue
            rb = raw_b[k * ib : m * ib]
            if same:
                same = engine.same_bytes(ra, rb)
            out.append(engine.pair(ra, ta.dtype, rb, tb.dtype, work))
        return out, same

    sa, sb = _Moments(), _Moments()
    cxy, maxdiff = 0.0, 0.0
    check_same = tb is not None and ta.dtype == tb.dtype
    def load(i: int, bufs: tuple) -> tuple[int, memoryview, memoryview | None]:
        """Rows i.. of a block into one buffer set: (elements, raw bytes of a, of b in a's order or None)."""
        buf_a, buf_b, buf_t = bufs
        j = min(rows, i + step)
        n_block = (j - i) * cols
        raw_a = buf_a[: n_block * ia]
        jobs = [(a.source, a.offset + i * cols * ia, n_block * ia, raw_a)]
        raw_b = None
        if tb is not None and not transposed:
            raw_b = buf_b[: n_block * ib]
            jobs.append((b.source, b.offset + i * cols * ib, n_block * ib, raw_b))
        elif transposed:  # head [cols, rows]: columns i..j of each of its rows, then put in the embedding's order
            width = (j - i) * ib
            jobs += [(b.source, b.offset + (r * rows + i) * ib, width, buf_b[r * width : (r + 1) * width]) for r in range(cols)]
        read(jobs)
        if transposed:
            engine.transpose_bytes(buf_b[: n_block * ib], buf_t, j - i, cols, ib)
            raw_b = buf_t[: n_block * ib]
        return n_block, raw_a, raw_b

    raw_a = raw_b = pending = None
    starts = range(0, rows, step)
    try:
        if prefetch is not None:
            pending = prefetch.submit(load, 0, buffers[0])
        for k, i in enumerate(starts):
            if prefetch is None:
                n_block, raw_a, raw_b = load(i, buffers[0])
            else:
                n_block, raw_a, raw_b = pending.result()
                pending = prefetch.submit(load, starts[k + 1], buffers[(k + 1) % 2]) if k + 1 < len(starts) else None
            parts = _split(n_block, compute_threads, min(chunk, n_block))
            for chunks, same in run(reduce_range, [(k, lo, hi, raw_a, raw_b) for k, (lo, hi) in enumerate(parts)]):
                check_same = check_same and same
                for c in chunks:
                    if raw_b is None:
                        sa.merge(*c)
                        continue
                    n, mx, my, sxx, syy, sxy, md, (xlo, xhi, ylo, yhi) = c
                    na = sa.n
                    dx = sa.merge(n, mx, sxx, xlo, xhi)
                    dy = sb.merge(n, my, syy, ylo, yhi)
                    cxy += sxy + (dx * dy * na * n / (na + n) if na else 0.0)
                    maxdiff = md if math.isnan(md) else max(maxdiff, md)
    finally:
        if prefetch is not None:
            prefetch.shutdown()  # a read still in flight (after an error) finishes before its buffer goes
        if pool is not None:
            pool.shutdown()
        del buffers, raw_a, raw_b, pending
        engine.release()
        if progress is not None:
            progress.stop()

    if tb is None:
        return ContentCheck(
            orientation=orientation, pearson_r=1.0, max_abs_diff=0.0, identical=True, bytes_read=bytes_read,
            elements=ta.numel, stats=MappingProxyType({ta.name: MappingProxyType(sa.summary())}), **base,
        )
    r = None
    if all(math.isfinite(v) for v in (sa.m2, sb.m2, cxy)) and sa.m2 > 0 and sb.m2 > 0:
        r = max(-1.0, min(1.0, cxy / math.sqrt(sa.m2 * sb.m2)))
    return ContentCheck(
        orientation=orientation,
        pearson_r=r,
        max_abs_diff=maxdiff if math.isfinite(maxdiff) else None,
        identical=bool(check_same),
        bytes_read=bytes_read,
        elements=ta.numel,
        stats=MappingProxyType({ta.name: MappingProxyType(sa.summary()), tb.name: MappingProxyType(sb.summary())}),
        **base,
    )


# --------------------------------------------------------------------------------------------------------------------
# Which tensors, where their bytes are, and what the numbers mean for a report.

Opener = Callable[[str], ByteSource]


def local_opener(target: str) -> Opener:
    """Open the files of a local target by the names its FileRecords carry; one LocalFile per file, reused."""
    path = Path(target)
    if path.is_dir() and (snapshot := cache_snapshot(path, target)) is not None:
        path = snapshot  # a repo folder of the Hugging Face cache: the snapshot that load_local counted
    root = path if path.is_dir() else path.parent
    opened: dict[str, LocalFile] = {}

    def open_file(name: str) -> LocalFile:
        if name not in opened:
            file_path = root / name if not path.is_dir() and name == path.name else inside(root, name, target)
            opened[name] = LocalFile(file_path, str(root / name) if path.is_dir() else target)
        return opened[name]

    open_file.opened = opened  # type: ignore[attr-defined]  # tests read the byte counts
    return open_file


class RangeSource:
    """A Hub file read with one HTTP range request per read, nothing cached: memory stays one block.

    Requests go through :class:`ckptcount.sources.http.HubClient` (its retries, error mapping, and the stop after the
    bytes asked for when a server ignores Range); after a redirect to a CDN, later reads go straight there. Thread-safe:
    the verifier reads chunks in parallel.
    """

    def __init__(self, client, url: str, where: str, size: int | None):
        import threading

        self.client, self.url, self.name, self._size = client, url, where, size
        self._location: str | None = None
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0

    def size(self) -> int | None:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        span = (offset, offset + length)
        url = self._location or self.url
        try:
            reply = self.client.get(url, self.name, byte_range=span, keep=span)
        except CkptError:
            if self._location is None:
                raise
            self._location = None  # a signed CDN URL may have expired: go back through the Hub once
            reply = self.client.get(self.url, self.name, byte_range=span, keep=span)
        if reply.url != url and reply.status == 206:
            self._location = reply.url
        body = reply.body[:length]
        with self._lock:
            self.bytes_read += len(body)
            self.requests += 1
        return body


def hub_opener(checkpoint, token: str | None = None) -> Opener:
    """Open the files of a Hub target (``Checkpoint.origin``) at the commit its headers were read from."""
    from urllib.parse import quote

    from ..sources.http import HubClient
    from ..targets.hub_target import names_file as _is_file

    o = checkpoint.origin
    path = o.get("path") or ""
    folder = path.rsplit("/", 1)[0] if _is_file(path) and "/" in path else ("" if _is_file(path) else path.strip("/"))
    rev = o.get("sha") or o.get("revision") or "main"
    client = HubClient(o["endpoint"], token)
    sizes = {f.path: f.size for f in checkpoint.files}
    opened: dict[str, RangeSource] = {}

    def open_file(name: str) -> RangeSource:
        if name not in opened:
            full = f"{folder}/{name}" if folder else name
            url = f"{o['endpoint'].rstrip('/')}/{o['repo']}/resolve/{quote(rev, safe='')}/{quote(full)}"
            opened[name] = RangeSource(client, url, f"{o['repo']}/{full}", sizes.get(name))
        return opened[name]

    open_file.opened = opened  # type: ignore[attr-defined]
    open_file.client = client  # type: ignore[attr-defined]
    return open_file


def opener(checkpoint, token: str | None = None) -> Opener:
    """Open the files of a checkpoint where its headers were read: locally, from the copy huggingface_hub downloaded
    (offline), or on the Hub at the commit read."""
    origin = getattr(checkpoint, "origin", None) or {}
    if origin.get("local_copy"):  # offline, counted from huggingface_hub's downloaded copy: read it there
        return local_opener(origin["local_copy"])
    return hub_opener(checkpoint, token) if origin else local_opener(checkpoint.target)


def locate_tensor(f: FileRecord, t: TensorRecord, open_source: Opener) -> Located | str:
    """Where ``t``'s bytes are in its file ``f`` (:func:`data_offset`), opened with ``open_source``; or why they
    cannot be read."""
    source = open_source(t.file) if not f.header_only and f.format != "safetensors" and f.storages else None
    where = data_offset(f, t, source)
    if isinstance(where, str):
        return where
    return Located(t, source or open_source(t.file), where)


def data_offset(f: FileRecord, t: TensorRecord, source: ByteSource | None = None) -> int | str:
    """Absolute offset of ``t``'s bytes in its file, or why they cannot be read.

    Safetensors: after the header. GGUF: the data section's start plus the tensor's offset. PyTorch files: a tensor
    is read when it is one row-major run of its storage (``FileRecord.strided`` lists the others: a transposed view, a
    slice with a step); in a legacy file at the offset the reader computed, in a zip from its storage's stored entry,
    whose local header is read from ``source`` (30 bytes: where the data starts depends on the header's own name and
    extra-field lengths)."""
    if f.header_only:
        return f"{f.path} holds only its header: no tensor data to verify"
    if f.format == "safetensors":
        return 8 + f.header_bytes + t.begin
    if f.format in ("pytorch", "pytorch-legacy"):
        if t.name in f.strided:
            return f"{t.name} is a strided view of its storage (a transpose or a step): not read"
        where = f.storages.get(t.storage)
        if where is None:
            return f"{t.name}: storage {t.storage!r} is not a stored (uncompressed) zip entry of its size: not read"
        kind, offset = where
        if kind == "at":
            return offset + t.begin
        if source is None:
            return f"{t.name}: no source to read its storage's zip entry from"
        head = source.read(offset, 30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise ReadError(f.path, f"no zip local header for storage {t.storage!r} at offset {offset}")
        nlen, elen = struct.unpack("<HH", head[26:30])
        start = offset + 30 + nlen + elen + t.begin
        size = source.size()
        if size is not None and start + t.nbytes > size:
            raise ReadError(f.path, f"storage {t.storage!r} of {t.name!r} runs past the end of the file")
        return start
    if f.format == "gguf" and "data" in f.storages:  # row-major (the reader reverses ggml's dims); quantized types are
        return f.storages["data"][1] + t.begin  # refused by compare(), by dtype
    return f"reading {f.format} tensor data is not supported by --verify-ties"


def _pick(report: Report) -> tuple[str | None, str | None]:
    """(token embedding, output head): the stored ones first, else the names the tie group holding the other gives."""
    stored = {c.tensor.name: c for c in report.classified if c.kind != BUFFER}
    embeddings = [c for c in stored.values() if c.component == TOKEN_EMBEDDING and len(c.tensor.shape) == 2]
    emb = min(embeddings, key=lambda c: (c.tensor.name.count("."), c.tensor.name), default=None)
    e = emb.tensor.name if emb else None
    heads = [n for n in HEAD_WEIGHTS if n in stored and stored[n].component == OUTPUT_HEAD and len(stored[n].tensor.shape) == 2]
    if not heads and emb is not None:  # any other 2-D head weight that lines up with the embedding, either way round
        shapes = (emb.tensor.shape, emb.tensor.shape[::-1])
        heads = sorted(n for n, c in stored.items() if c.component == OUTPUT_HEAD and n.endswith("weight") and c.tensor.shape in shapes)
    h = heads[0] if heads else None
    if e is None or h is None:
        for g in report.ties:
            if (e is not None and e not in g.names) or (h is not None and h not in g.names):
                continue
            e = e or next((n for n in g.names if component_of(n) == TOKEN_EMBEDDING), None)
            h = h or next((n for n in g.names if component_of(n) == OUTPUT_HEAD and n.endswith("weight")), None)
            if e is not None and h is not None:
                break
    return e, h


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def verify_report(
    report: Report,
    *,
    device: str = "auto",
    backend: str | None = None,
    engine: _Numpy | _Torch | None = None,
    open_source: Opener | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int | None = None,
    progress: Progress | None = None,
    token: str | None = None,
) -> Report:
    """A new Report with ``verification`` set and the audit findings appended to its checkpoint's findings."""
    engine = engine or resolve(device, backend)
    ck = report.checkpoint
    if open_source is None:
        open_source = opener(ck, token)
    files = {f.path: f for f in ck.files}
    tensors = {t.name: t for t in ck.tensors}
    findings: list[Finding] = []
    cache: dict[tuple[str, ...], ContentCheck] = {}

    def locate(name: str) -> Located | str:
        t = tensors[name]
        return locate_tensor(files[t.file], t, open_source)

    def check(a: str, b: str | None) -> ContentCheck:
        key = (a,) if b is None else (a, b)
        if key not in cache:
            names = key
            ta, tb = tensors[a], tensors.get(b) if b is not None else None
            if tb is not None and ta.storage is not None and ta.file == tb.file and (ta.storage, ta.begin, ta.end, ta.dtype, ta.shape) == (tb.storage, tb.begin, tb.end, tb.dtype, tb.shape):
                # torch.save of tied weights: both names view the same bytes of one storage; nothing to read
                cache[key] = ContentCheck(
                    names=names, orientation="shared-storage", pearson_r=1.0, max_abs_diff=0.0, identical=True,
                    elements=ta.numel, device=engine.device, backend=engine.name,
                )
                return cache[key]
            try:
                la = locate(a)
                lb = locate(b) if b is not None else None
                reason = la if isinstance(la, str) else lb if isinstance(lb, str) else None
                if reason is not None:
                    cache[key] = ContentCheck(names=names, orientation="none", skipped=reason, device=engine.device, backend=engine.name)
                else:
                    n = workers if workers is not None else (None if isinstance(la.source, LocalFile) else 4)
                    cache[key] = compare(la, lb, engine=engine, block_bytes=block_bytes, workers=n, progress=progress)
            except CkptError as err:
                cache[key] = ContentCheck(names=names, orientation="none", skipped=str(err), device=engine.device, backend=engine.name)
            c = cache[key]
            if c.skipped:
                findings.append(Finding("not-verified", f"{' vs '.join(names)}: {c.skipped}"))
        return cache[key]

    tied, how = tie_setting(ck.config)
    e, h = _pick(report)
    group_of = {n: g for g in report.ties for n in g.names}
    evh = None
    stored = tuple(n for n in (e, h) if n is not None and n in tensors)
    if e is not None and h is not None:
        g = group_of.get(e) if group_of.get(e) is group_of.get(h) else None
        if len(stored) == 2:
            evh = check(e, h)
            if not evh.skipped:
                is_tied = (g is not None and g.counted_once) or tied is True
                if is_tied:
                    why = how if tied is True else g.evidence.split("; ")[0]
                else:
                    why = how if tied is False else "no config.json ties them"
                findings.extend(_judge(e, h, evh, is_tied, why, tensors[h].nbytes))
        elif g is not None and g.stored:  # one matrix under two names: structural
            evh = check(g.stored[0], None)

    tie_checks: dict[tuple[str, ...], ContentCheck] = {}
    for g in report.ties:
        if len(g.stored) >= 2:
            pairs = [check(g.stored[0], s) for s in g.stored[1:]]
            tie_checks[g.names] = _merge_pairs(g, pairs)
            if not ({e, h} <= set(g.stored)):
                for s, c in zip(g.stored[1:], pairs):
                    if not c.skipped:
                        findings.extend(_judge(g.stored[0], s, c, g.counted_once, g.evidence, tensors[s].nbytes))
        elif len(g.stored) == 1:
            if evh is not None and evh.orientation == "structural" and g.stored[0] in evh.names:
                tie_checks[g.names] = evh
            else:
                tie_checks[g.names] = ContentCheck(names=g.stored, orientation="structural", pearson_r=1.0, max_abs_diff=0.0, identical=True)

    verification = Verification(
        embedding=e, head=h, stored=stored, embedding_vs_head=evh, ties=MappingProxyType(tie_checks)
    )
    new_ck = replace(ck, findings=ck.findings + tuple(findings))
    return replace(report, checkpoint=new_ck, verification=verification)


def _merge_pairs(g: TieGroup, pairs: list[ContentCheck]) -> ContentCheck:
    if len(pairs) == 1:
        return pairs[0]
    done = [c for c in pairs if not c.skipped]
    rs = [c.pearson_r for c in done]
    diffs = [c.max_abs_diff for c in done]
    return ContentCheck(
        names=g.stored,
        orientation=",".join(sorted({c.orientation for c in pairs})),
        pearson_r=min(rs) if rs and None not in rs else None,
        max_abs_diff=max(diffs) if diffs and None not in diffs else None,
        identical=all(c.identical for c in done) if len(done) == len(pairs) else None,
        bytes_read=sum(c.bytes_read for c in pairs),
        device=pairs[0].device,
        backend=pairs[0].backend,
        elements=sum(c.elements for c in pairs),
        stats=MappingProxyType({k: v for c in pairs for k, v in c.stats.items()}),
        skipped="; ".join(c.skipped for c in pairs if c.skipped) or None,
    )


def _judge(a: str, b: str, c: ContentCheck, tied: bool, why: str, nbytes: int) -> list[Finding]:
    """The audit: a tie the content contradicts, an untied exact copy, or a near-copy."""
    r, d = c.pearson_r, c.max_abs_diff
    stats = f"r={_fmt(r, '.9f')}, max |diff| {_fmt(d, '.3g')}"
    equal = c.identical or d == 0.0
    if tied and not equal:
        near = "a near-copy, " if r is not None and r >= NEAR_COPY_R else ""
        return [Finding("tied-but-different", f"{why}, but the stored {b} differs from {a} ({near}{stats}): a loader that ties them silently discards {b}")]
    if not tied and c.identical:
        return [Finding("untied-but-identical", f"{b} is a byte-identical copy of {a} ({nbytes:,} bytes) but {why}: tying them would save those bytes")]
    if not tied and r is not None and r >= NEAR_COPY_R and not equal:
        return [Finding("near-copy", f"{b} is a near-copy of {a} ({stats}) but not identical; {why}")]
    return []


def verify_results(results: list, **kwargs) -> list:
    """verify_report on every Report of an audit_many list; errors pass through unchanged."""
    engine = kwargs.pop("engine", None) or resolve(kwargs.pop("device", "auto"), kwargs.pop("backend", None))
    return [r if isinstance(r, CkptError) else verify_report(r, engine=engine, **kwargs) for r in results]


def check_dict(c: ContentCheck) -> dict:
    """The JSON form of one content check."""
    d: dict = {
        "pearson_r": c.pearson_r,
        "max_abs_diff": c.max_abs_diff,
        "identical": c.identical,
        "bytes_read": c.bytes_read,
        "device": c.device,
        "backend": c.backend,
        "orientation": c.orientation,
        "elements": c.elements,
    }
    if c.orientation == "structural":
        d["structural"] = True
    if c.stats:
        d["stats"] = {name: dict(s) for name, s in c.stats.items()}
    if c.skipped:
        d["skipped"] = c.skipped
    return d


class StderrProgress:
    """A rich progress bar of bytes read, on stderr (never stdout); shown only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TransferSpeedColumn

        self._console = Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=self._console, transient=True,
        )
        self._task = None

    def start(self, total: int, label: str) -> None:
        from rich.markup import escape

        self._bar.start()
        self._task = self._bar.add_task(escape(label[:60]), total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._bar.stop()
