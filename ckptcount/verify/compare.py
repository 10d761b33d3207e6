"""Compare two stored tensors by content, or describe one, within one host-memory budget.

The byte spans are read through :mod:`.spans` in row blocks (the next block while this one is reduced) and reduced
chunk by chunk by a backend (:mod:`.backends`) to float64 moments, merged with Chan's parallel formulas in a fixed
order: the numbers depend only on the block size. A head stored ``[d, V]`` (GPT-2 Conv1D style, or any transposed
export) is compared element for element with the ``[V, d]`` embedding it would equal. docs/verify.md says how the CPU
path is made fast.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from ..formats.safetensors import ByteSource
from ..records import DTYPE_BITS, ContentCheck, TensorRecord
from ..sources.files import LocalFile
from .backends import DECODABLE, _Numpy, _Torch
from . import spans
from .spans import Located, _read_into

DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024  # host memory of one comparison: raw block of both tensors + work arrays + bodies
MIN_PIECE = 256 * 1024  # remote pieces shrink with the budget (bodies in flight count against it), down to this
COMPUTE_THREADS = 1  # threads reducing chunks: 2 were slower than 1 on a 2-CPU machine (~40 short numpy calls per chunk
# hand the GIL back and forth) for 1.7x the CPU time; the other threads read (one long preadv each, GIL released)


class Progress(Protocol):
    def start(self, total: int, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...



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
    orientation, skipped = _orientation(ta, tb)
    if skipped is not None:
        return ContentCheck(orientation="none", skipped=skipped, **base)
    threads = workers if workers is not None else _default_threads()
    remote = not all(isinstance(s, LocalFile) for s in [a.source] + ([b.source] if b else []))
    plan = _plan(ta, tb, orientation == "transposed", engine, block_bytes, threads, remote)
    s = _Stream(a, b, engine, plan, progress)
    s.run(" vs ".join(names))
    if tb is None:
        return ContentCheck(
            orientation=orientation, pearson_r=1.0, max_abs_diff=0.0, identical=True, bytes_read=s.bytes_read,
            elements=ta.numel, stats=MappingProxyType({ta.name: MappingProxyType(s.sa.summary())}), **base,
        )
    r = None
    if all(math.isfinite(v) for v in (s.sa.m2, s.sb.m2, s.cxy)) and s.sa.m2 > 0 and s.sb.m2 > 0:
        r = max(-1.0, min(1.0, s.cxy / math.sqrt(s.sa.m2 * s.sb.m2)))
    return ContentCheck(
        orientation=orientation,
        pearson_r=r,
        max_abs_diff=s.maxdiff if math.isfinite(s.maxdiff) else None,
        identical=bool(s.check_same),
        bytes_read=s.bytes_read,
        elements=ta.numel,
        stats=MappingProxyType({ta.name: MappingProxyType(s.sa.summary()), tb.name: MappingProxyType(s.sb.summary())}),
        **base,
    )


def _orientation(ta: TensorRecord, tb: TensorRecord | None) -> tuple[str, str | None]:
    """How ``tb`` lines up with ``ta`` (same, transposed, structural when there is no ``tb``), or why they cannot be
    compared."""
    for t in (ta, tb):
        if t is not None and t.dtype not in DECODABLE:
            return "none", f"{t.name} is {t.dtype}: only F64, F32, F16, BF16 and F8 are decoded"
    if ta.numel == 0:
        return "none", f"{ta.name} has no elements"
    if tb is None:
        return "structural", None
    if ta.shape == tb.shape:
        return "same", None
    if len(ta.shape) == 2 and tb.shape == ta.shape[::-1]:
        return "transposed", None
    return "none", f"shapes {list(ta.shape)} and {list(tb.shape)} do not line up"


@dataclass(frozen=True)
class _Plan:
    """How one comparison spends its budget: rows per block, buffer sets, chunk length, threads, read pieces."""

    rows: int
    cols: int
    ia: int  # bytes per element of a
    ib: int  # of b (0 without b)
    transposed: bool
    threads: int
    compute_threads: int
    piece_cap: int
    step: int
    sets: int
    chunk: int


def _plan(ta: TensorRecord, tb: TensorRecord | None, transposed: bool, engine, block_bytes: int, threads: int, remote: bool) -> _Plan:
    """The memory budget: per-thread work arrays, remote bodies in flight (a piece, its copy while it is joined, and
    allocator slack), then whole rows of raw bytes of both tensors (twice the head's when it is re-ordered) for the
    rest."""
    rows, cols = _rows_cols(ta)
    ia = DTYPE_BITS[ta.dtype] // 8
    ib = DTYPE_BITS[tb.dtype] // 8 if tb else 0
    compute_threads = 1 if engine.cuda else max(1, min(threads, COMPUTE_THREADS))
    piece_cap = spans.READ_CHUNK  # read at call time: one setting for both modules
    if remote:
        piece_cap = min(spans.READ_CHUNK, max(MIN_PIECE, block_bytes // (8 * threads)))
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
    return _Plan(rows, cols, ia, ib, transposed, threads, compute_threads, piece_cap, step, sets, chunk)


class _Stream:
    """One comparison under way: its buffer sets and work arrays, its threads, and the moments merged so far."""

    def __init__(self, a: Located, b: Located | None, engine, plan: _Plan, progress: Progress | None) -> None:
        self.a, self.b, self.engine, self.p, self.progress = a, b, engine, plan, progress
        self.ta, self.tb = a.tensor, (b.tensor if b else None)
        p = plan
        self.buffers = [
            (engine.host_buffer(p.step * p.cols * p.ia), engine.host_buffer(p.step * p.cols * p.ib) if self.tb else None,
             engine.host_buffer(p.step * p.cols * p.ib) if p.transposed else None)
            for _ in range(p.sets)
        ]
        self.works = [engine.work(p.chunk) for _ in range(p.compute_threads)]
        self.bytes_read = 0
        self.sa, self.sb = _Moments(), _Moments()
        self.cxy, self.maxdiff = 0.0, 0.0
        self.check_same = self.tb is not None and self.ta.dtype == self.tb.dtype
        self._map = map

    def run(self, label: str) -> None:
        """Every block, in order: read (the next one on the prefetch thread while this one is reduced), reduced in
        parts on the compute threads, the chunk moments folded in order."""
        p, ta, tb = self.p, self.ta, self.tb
        pool = ThreadPoolExecutor(p.threads) if p.threads > 1 else None
        prefetch = ThreadPoolExecutor(1) if p.sets == 2 else None
        self._map = pool.map if pool is not None else map
        if self.progress is not None:
            self.progress.start(ta.nbytes + (tb.nbytes if tb else 0), label)
        raw_a = raw_b = pending = None
        starts = range(0, p.rows, p.step)
        try:
            if prefetch is not None:
                pending = prefetch.submit(self._load, 0, self.buffers[0])
            for k, i in enumerate(starts):
                if prefetch is None:
                    n_block, raw_a, raw_b = self._load(i, self.buffers[0])
                else:
                    n_block, raw_a, raw_b = pending.result()
                    pending = prefetch.submit(self._load, starts[k + 1], self.buffers[(k + 1) % 2]) if k + 1 < len(starts) else None
                parts = _split(n_block, p.compute_threads, min(p.chunk, n_block))
                for chunks, same in self._map(self._reduce_range, [(k, lo, hi, raw_a, raw_b) for k, (lo, hi) in enumerate(parts)]):
                    self.check_same = self.check_same and same
                    self._fold(chunks, raw_b is None)
        finally:
            if prefetch is not None:
                prefetch.shutdown()  # a read still in flight (after an error) finishes before its buffer goes
            if pool is not None:
                pool.shutdown()
            self.buffers = None
            del raw_a, raw_b, pending
            self.engine.release()
            if self.progress is not None:
                self.progress.stop()

    def _read(self, jobs: list[tuple[ByteSource, int, int, memoryview]]) -> None:
        """Read (source, offset, length, destination) spans, cut into pieces spread over the threads."""
        threads = self.p.threads
        total = sum(n for _, _, n, _ in jobs)
        piece = max(1, min(self.p.piece_cap, -(-total // threads)))
        pieces = [(src, off + k, view[k : min(n, k + piece)]) for src, off, n, view in jobs for k in range(0, n, piece)]
        batches = [pieces[lo:hi] for lo, hi in _split(len(pieces), threads, 1)]
        for got in self._map(lambda batch: sum(_read_into(*p) for p in batch), batches):
            self.bytes_read += got
            if self.progress is not None:
                self.progress.advance(got)

    def _load(self, i: int, bufs: tuple) -> tuple[int, memoryview, memoryview | None]:
        """Rows i.. of a block into one buffer set: (elements, raw bytes of a, of b in a's order or None)."""
        p, a, b, tb = self.p, self.a, self.b, self.tb
        rows, cols, ia, ib = p.rows, p.cols, p.ia, p.ib
        buf_a, buf_b, buf_t = bufs
        j = min(rows, i + p.step)
        n_block = (j - i) * cols
        raw_a = buf_a[: n_block * ia]
        jobs = [(a.source, a.offset + i * cols * ia, n_block * ia, raw_a)]
        raw_b = None
        if tb is not None and not p.transposed:
            raw_b = buf_b[: n_block * ib]
            jobs.append((b.source, b.offset + i * cols * ib, n_block * ib, raw_b))
        elif p.transposed:  # head [cols, rows]: columns i..j of each of its rows, then put in the embedding's order
            width = (j - i) * ib
            jobs += [(b.source, b.offset + (r * rows + i) * ib, width, buf_b[r * width : (r + 1) * width]) for r in range(cols)]
        self._read(jobs)
        if p.transposed:
            self.engine.transpose_bytes(buf_b[: n_block * ib], buf_t, j - i, cols, ib)
            raw_b = buf_t[: n_block * ib]
        return n_block, raw_a, raw_b

    def _reduce_range(self, job: tuple[int, int, int, memoryview, memoryview | None]) -> tuple[list, bool]:
        """Chunk moments of elements [lo, hi) of a block (raw_a, raw_b), and whether their bytes are equal."""
        k0, lo, hi, raw_a, raw_b = job
        engine, chunk, ia, ib = self.engine, self.p.chunk, self.p.ia, self.p.ib
        work = self.works[k0]
        out = []
        same = self.check_same
        for k in range(lo, hi, chunk):
            m = min(hi, k + chunk)
            ra = raw_a[k * ia : m * ia]
            if raw_b is None:
                out.append(engine.single(ra, self.ta.dtype, work))
                continue
            rb = raw_b[k * ib : m * ib]
            if same:
                same = engine.same_bytes(ra, rb)
            out.append(engine.pair(ra, self.ta.dtype, rb, self.tb.dtype, work))
        return out, same

    def _fold(self, chunks: list, single: bool) -> None:
        """Merge a part's chunk moments, in order, into the running moments (and the co-moment of a pair)."""
        for c in chunks:
            if single:
                self.sa.merge(*c)
                continue
            n, mx, my, sxx, syy, sxy, md, (xlo, xhi, ylo, yhi) = c
            na = self.sa.n
            dx = self.sa.merge(n, mx, sxx, xlo, xhi)
            dy = self.sb.merge(n, my, syy, ylo, yhi)
            self.cxy += sxy + (dx * dy * na * n / (na + n) if na else 0.0)
            self.maxdiff = md if math.isnan(md) else max(self.maxdiff, md)
