"""Verify ties by content: read only the token embedding and output head (and other tied pairs) and compare them.

Everything before this module reads headers only. Here, on request (``--verify-ties``), the byte spans of the tensors
involved are read through the same :class:`ByteSource` interface (a local file or an HTTP range reader: only
``source.read(offset, length)`` is used), in row blocks, and reduced to running float64 moments merged with Chan's
parallel formulas, so peak memory is one block whatever the vocabulary size. For each pair:

* Pearson r and the largest absolute difference, in the head's orientation: a head stored ``[d, V]`` (GPT-2 Conv1D
  style, or any transposed export) is compared element for element with the ``[V, d]`` embedding it would equal;
* whether the stored bytes are identical (same dtype, same bits, element for element in that orientation);
* mean, std, min and max of each tensor.

A head that is not stored but tied by the config is one matrix: the tie is structural (r = 1 by construction) and only
the stored tensor's statistics are computed.

Backends: torch (on ``cuda`` when available, pinned host blocks copied to the GPU, else ``cpu``) or, without torch,
numpy on the CPU. Both decode F32, F16, BF16, F64 and the five F8 variants and give the same numbers (to ~1e-12).
torch and numpy are imported inside functions only: the counting path never imports them.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Protocol

from .classify import component_of
from .config import tie_setting
from .errors import CkptError, ReadError
from .records import (
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
from .safetensors_header import ByteSource
from .sources import LocalFile, inside

DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024  # working set of one block: raw bytes of both tensors + float64 copies
READ_CHUNK = 8 * 1024 * 1024  # one read request at most this long (parallel requests for remote sources)
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
    name = "numpy"
    chunk = 1 << 18  # elements per reduction step: three float64 work arrays of 2 MiB stay in cache

    def __init__(self) -> None:
        try:
            import numpy as np
        except ImportError:
            raise VerifyError("--verify-ties", "needs numpy (CPU) or torch (CPU or GPU): pip install 'ckptcount[torch]'") from None
        self.np = np
        self.device = "cpu"
        self._luts: dict[str, object] = {}
        self._work = None

    def decode(self, raw, dtype: str, out=None):
        """float64 values of little-endian ``raw`` (into ``out`` when given)."""
        np = self.np
        n = len(raw) * 8 // DTYPE_BITS[dtype]
        out = np.empty(n, dtype=np.float64) if out is None else out[:n]
        if dtype in ("F64", "F32", "F16"):
            np.copyto(out, np.frombuffer(raw, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype]))
        elif dtype == "BF16":  # the high half of an IEEE float32
            np.copyto(out, (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32))
        else:
            if dtype not in self._luts:
                self._luts[dtype] = np.array(fp8_values(dtype), dtype=np.float64)
            np.take(self._luts[dtype], np.frombuffer(raw, dtype=np.uint8), out=out)
        return out

    def _buffers(self, n: int):
        if self._work is None or self._work[0].size < n:
            self._work = tuple(self.np.empty(n, dtype=self.np.float64) for _ in range(3))
        return self._work

    def single(self, raw, dtype):
        x = self.decode(raw, dtype, self._buffers(len(raw) * 8 // DTYPE_BITS[dtype])[0])
        mean = float(x.mean())
        lo, hi = float(x.min()), float(x.max())
        x -= mean
        return x.size, mean, float(self.np.vdot(x, x)), lo, hi

    def pair(self, raw_a, dtype_a, raw_b, dtype_b):
        """Moments of one chunk of a and b, already in the same element order."""
        np = self.np
        n = len(raw_a) * 8 // DTYPE_BITS[dtype_a]
        bx, by, bt = self._buffers(n)
        x, y, t = self.decode(raw_a, dtype_a, bx), self.decode(raw_b, dtype_b, by), bt[:n]
        np.subtract(x, y, out=t)
        np.abs(t, out=t)
        maxdiff = float(t.max())
        mx, my = float(x.mean()), float(y.mean())
        stats = (float(x.min()), float(x.max()), float(y.min()), float(y.max()))
        x -= mx
        y -= my
        return n, mx, my, float(np.vdot(x, x)), float(np.vdot(y, y)), float(np.vdot(x, y)), maxdiff, stats

    def transpose_bytes(self, raw, out, rows: int, cols: int, size: int) -> None:
        """``raw`` holds a [cols, rows] tile of ``size``-byte elements; write it to ``out`` in [rows, cols] order."""
        np = self.np
        dst = np.frombuffer(out, dtype=np.uint8, count=rows * cols * size).reshape(rows, cols, size)
        np.copyto(dst, np.frombuffer(raw, dtype=np.uint8).reshape(cols, rows, size).transpose(1, 0, 2))


class _Torch:
    name = "torch"

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.startswith("cuda")
        self.chunk = 1 << 62 if self.cuda else 1 << 20  # the GPU takes a whole block; the CPU, steps of 8 MiB in float64
        self._pinned = None
        self._np = None

    def _u8(self, raw):
        torch = self.torch
        host = torch.frombuffer(raw, dtype=torch.uint8)
        if not self.cuda:
            return host
        if self._pinned is None or self._pinned.numel() < len(raw):
            self._pinned = torch.empty(len(raw), dtype=torch.uint8, pin_memory=True)
        pinned = self._pinned[: len(raw)]
        pinned.copy_(host)
        return pinned.to(self.device, non_blocking=True)

    def decode(self, raw, dtype: str):
        torch = self.torch
        return self._u8(raw).view(getattr(torch, TORCH_DTYPES[dtype])).to(torch.float64)

    def single(self, raw, dtype):
        torch = self.torch
        x = self.decode(raw, dtype)
        mean = x.mean()
        lo, hi = torch.aminmax(x)
        x -= mean
        vals = torch.stack([mean, torch.dot(x, x), lo, hi]).tolist()
        return x.numel(), vals[0], vals[1], vals[2], vals[3]

    def pair(self, raw_a, dtype_a, raw_b, dtype_b):
        torch = self.torch
        x = self.decode(raw_a, dtype_a)
        y = self.decode(raw_b, dtype_b)
        maxdiff = (x - y).abs_().max()
        mx, my = x.mean(), y.mean()
        xlo, xhi = torch.aminmax(x)
        ylo, yhi = torch.aminmax(y)
        x -= mx
        y -= my
        v = torch.stack([mx, my, torch.dot(x, x), torch.dot(y, y), torch.dot(x, y), maxdiff, xlo, xhi, ylo, yhi]).tolist()
        return x.numel(), v[0], v[1], v[2], v[3], v[4], v[5], (v[6], v[7], v[8], v[9])

    def transpose_bytes(self, raw, out, rows: int, cols: int, size: int) -> None:
        torch = self.torch
        src = torch.frombuffer(raw, dtype=torch.uint8).reshape(cols, rows, size)
        dst = torch.frombuffer(out, dtype=torch.uint8, count=rows * cols * size).reshape(rows, cols, size)
        dst.copy_(src.permute(1, 0, 2))


def resolve(device: str = "auto", backend: str | None = None) -> _Numpy | _Torch:
    """The backend that will compute: torch on ``cuda`` when present (``auto``), torch on cpu, or numpy on cpu."""
    if backend not in (None, "torch", "numpy"):
        raise VerifyError("--verify-ties", f"unknown backend {backend!r}: torch or numpy")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise VerifyError("--device", f"unknown device {device!r}: auto, cpu or cuda")
    torch = None
    if backend != "numpy":
        try:
            import torch
        except ImportError:
            if backend == "torch":
                raise VerifyError("--verify-ties", "torch is not installed: pip install 'ckptcount[torch]'") from None
    if device.startswith("cuda"):
        if torch is None:
            raise VerifyError("--device", f"{device} needs torch built with CUDA: pip install 'ckptcount[torch]' (a CUDA wheel of torch)")
        if not torch.cuda.is_available():
            raise VerifyError("--device", f"{device}: torch {torch.__version__} sees no CUDA device")
        return _Torch(device)
    if torch is None:
        return _Numpy()
    return _Torch("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")


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


class _Reader:
    """Reads spans into one buffer, in chunks of at most READ_CHUNK, in parallel when ``workers`` > 1. Counts bytes."""

    def __init__(self, workers: int, progress: Progress | None):
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.progress = progress
        self.bytes_read = 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def read(self, source: ByteSource, spans: list[tuple[int, int]], buf: bytearray) -> memoryview:
        """The bytes of each (offset, length) span, concatenated into ``buf`` (reused from block to block)."""
        total = sum(n for _, n in spans)
        jobs = []
        pos = 0
        for offset, length in spans:
            done = 0
            while done < length:
                n = min(READ_CHUNK, length - done)
                jobs.append((pos + done, offset + done, n))
                done += n
            pos += length

        def one(job: tuple[int, int, int]) -> int:
            at, offset, n = job
            data = source.read(offset, n)
            if len(data) != n:
                raise ReadError(source.name, f"file ended after {len(data)} of {n} bytes at offset {offset}")
            buf[at : at + n] = data
            if self.progress is not None:
                self.progress.advance(n)
            return n

        if self.pool is None or len(jobs) == 1:
            got = sum(one(j) for j in jobs)
        else:
            got = sum(self.pool.map(one, jobs))
        self.bytes_read += got
        return memoryview(buf)[:total]


def _rows_cols(t: TensorRecord) -> tuple[int, int]:
    if not t.shape:
        return 1, 1
    rows = t.shape[0]
    return rows, (t.numel // rows if rows else 0)


def compare(
    a: Located,
    b: Located | None,
    *,
    engine: _Numpy | _Torch,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int = 1,
    progress: Progress | None = None,
) -> ContentCheck:
    """Compare ``b`` (a head, in its stored orientation) with ``a`` (the embedding), or describe ``a`` alone.

    Streams row blocks of ``a`` with the matching rows of ``b`` (the matching column tile, read row by row, when ``b``
    is stored transposed); each block costs about ``block_bytes`` of memory.
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
    # memory per row of a block: the raw bytes of both tensors (twice the head's when it is re-ordered); the float64
    # work arrays are a fixed few MiB (numpy, torch cpu) or live on the GPU
    per_row = cols * (ia + ib * (2 if transposed else 1))
    step = max(1, block_bytes // max(1, per_row))
    buf_a = bytearray(min(step, rows) * cols * ia)
    buf_b = bytearray(min(step, rows) * cols * ib) if tb else None
    buf_t = bytearray(len(buf_b)) if transposed else None
    reader = _Reader(workers, progress)
    if progress is not None:
        progress.start(ta.nbytes + (tb.nbytes if tb else 0), " vs ".join(names))
    sa, sb = _Moments(), _Moments()
    cxy, maxdiff, same = 0.0, 0.0, tb is not None and ta.dtype == tb.dtype
    try:
        for i in range(0, rows, step):
            j = min(rows, i + step)
            raw_a = reader.read(a.source, [(a.offset + i * cols * ia, (j - i) * cols * ia)], buf_a)
            if tb is None:
                for k in range(0, (j - i) * cols, engine.chunk):
                    m = min((j - i) * cols, k + engine.chunk)
                    sa.merge(*engine.single(raw_a[k * ia : m * ia], ta.dtype))
                continue
            if not transposed:
                raw_b = reader.read(b.source, [(b.offset + i * cols * ib, (j - i) * cols * ib)], buf_b)
            else:  # head [cols, rows]: columns i..j of each of its rows, then put in the embedding's row order
                tile = reader.read(b.source, [(b.offset + (r * rows + i) * ib, (j - i) * ib) for r in range(cols)], buf_b)
                engine.transpose_bytes(tile, buf_t, j - i, cols, ib)
                raw_b = memoryview(buf_t)[: len(tile)]
            if same:
                same = raw_a == raw_b  # memcmp of the two blocks, element for element in the head's orientation
            n_block = (j - i) * cols
            for k in range(0, n_block, engine.chunk):
                m = min(n_block, k + engine.chunk)
                n, mx, my, sxx, syy, sxy, md, (xlo, xhi, ylo, yhi) = engine.pair(
                    raw_a[k * ia : m * ia], ta.dtype, raw_b[k * ib : m * ib], tb.dtype
                )
                na = sa.n
                dx = sa.merge(n, mx, sxx, xlo, xhi)
                dy = sb.merge(n, my, syy, ylo, yhi)
                cxy += sxy + (dx * dy * na * n / (na + n) if na else 0.0)
                maxdiff = md if math.isnan(md) else max(maxdiff, md)
    finally:
        reader.close()
        if progress is not None:
            progress.stop()

    if tb is None:
        return ContentCheck(
            orientation=orientation, pearson_r=1.0, max_abs_diff=0.0, identical=True, bytes_read=reader.bytes_read,
            elements=ta.numel, stats=MappingProxyType({ta.name: MappingProxyType(sa.summary())}), **base,
        )
    r = None
    if all(math.isfinite(v) for v in (sa.m2, sb.m2, cxy)) and sa.m2 > 0 and sb.m2 > 0:
        r = max(-1.0, min(1.0, cxy / math.sqrt(sa.m2 * sb.m2)))
    return ContentCheck(
        orientation=orientation,
        pearson_r=r,
        max_abs_diff=maxdiff if math.isfinite(maxdiff) else None,
        identical=bool(same),
        bytes_read=reader.bytes_read,
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

    Requests go through :class:`ckptcount.http_source.HubClient` (its retries, error mapping, and the stop after the
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

    from .http_source import HubClient
    from .hub import _is_file

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


def data_offset(f: FileRecord, t: TensorRecord) -> int | str:
    """Absolute offset of ``t``'s bytes in its file, or why they cannot be read."""
    if f.header_only:
        return f"{f.path} holds only its header: no tensor data to verify"
    if f.format == "safetensors":
        return 8 + f.header_bytes + t.begin
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
        open_source = hub_opener(ck, token) if getattr(ck, "origin", None) else local_opener(ck.target)
    files = {f.path: f for f in ck.files}
    tensors = {t.name: t for t in ck.tensors}
    findings: list[Finding] = []
    cache: dict[tuple[str, ...], ContentCheck] = {}

    def locate(name: str) -> Located | str:
        t = tensors[name]
        where = data_offset(files[t.file], t)
        if isinstance(where, str):
            return where
        source = open_source(t.file)
        return Located(t, source, where)

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
                    n = workers if workers is not None else (1 if isinstance(la.source, LocalFile) else 4)
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
