"""The numeric backends of --verify-ties: decode raw little-endian bytes to float64 and reduce a chunk to moments.

numpy on the CPU (the default there: fewer, larger vectorised steps than torch can take without its intra-op threads),
torch on ``cuda`` when available (blocks in pinned host memory, copied to the GPU), or torch on the CPU when asked.
Both decode F32, F16, BF16, F64 and the five F8 variants and give the same numbers (to ~1e-12). :func:`resolve` picks
one. torch and numpy are imported inside functions only: the counting path never imports them.
"""

from __future__ import annotations

import math
import os
import sys

from ..errors import CkptError
from ..records import DTYPE_BITS

CHUNK = 1 << 16  # elements per CPU reduction step: float64 work arrays of 1.75 MiB per thread, cache-resident
TORCH_CHUNK = 1 << 15  # torch's at::internal::GRAIN_SIZE: ops on at most this many elements stay on the calling thread
DOT = 8192  # elements per BLAS dot: OpenBLAS splits a ddot over 10,000 elements across threads, 4-20x slower when busy

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
# Backends: decode raw little-endian bytes to float64 and reduce a chunk to moments.


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

