"""What a download would cost, before any download: a pure function of a Checkpoint (and the repo listing).

- ``bytes_by_format``: every checkpoint file the repo (or directory) holds, per format, counted or not;
- ``download_bytes``: the files that would be loaded (the ones counted);
- ``memory_stored``: bytes of every stored tensor at its stored dtype (quantized GGUF blocks at their block size);
- ``memory_at``: the same at ``--dtype``: floating tensors (and quantized ones) converted to that dtype, integer and
  bool tensors (masks, position ids) kept as stored. int4 is 4 bits per element with no group scales or zero points,
  so it is a lower bound for any real int4 format.

``--max-size`` checks ``download_bytes``; ``--fits`` checks the memory at ``--dtype`` (or at the stored dtype without
it). A failed check sets exit code 3 (errors.EXIT_CHECK).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .records import NON_FLOAT_DTYPES, Checkpoint, Counts

# --dtype choices and their bits per element.
DTYPES: Mapping[str, int] = MappingProxyType({"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int4": 4})

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'20GB' -> 20*10**9, '24GiB' -> 24*2**30, '1.5TB', '512' (bytes). Raises ValueError on anything else."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 20GB, 24GiB, 1.5TB, 123456)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: int) -> str:
    """Bytes in decimal and binary units: '6,431,808,608 B (6.43 GB, 5.99 GiB)'."""
    return f"{n:,} B ({n / 1e9:.2f} GB, {n / 2**30:.2f} GiB)"


@dataclass(frozen=True)
class Check:
    option: str  # "--max-size" | "--fits"
    limit: int
    value: int
    measures: str  # "download" | "memory at bf16" ...

    @property
    def ok(self) -> bool:
        return self.value <= self.limit

    def message(self) -> str:
        verdict = "within" if self.ok else "exceeds"
        return f"{self.measures} {human(self.value)} {verdict} {self.option} {human(self.limit)}"


@dataclass(frozen=True)
class Preflight:
    bytes_by_format: Mapping[str, int]
    download_bytes: int
    memory_stored: int
    dtype: str | None
    memory_at_dtype: int | None
    checks: tuple[Check, ...] = ()
    listing_complete: bool = True  # bytes_by_format covers every file; False: only the counted ones (Hub, sharded, unlisted)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


def memory_at(checkpoint: Checkpoint, bits: int | None, views: frozenset[str] | set[str] = frozenset()) -> int:
    """Bytes of the stored tensors, floating ones at ``bits`` per element (None: as stored).

    ``views``: names not stored apart (``Counts.stored_as_views``: tied names that view their group's counted member's
    storage, as torch.save writes tied weights), left out as ``count`` leaves them out of the stored totals."""
    total = 0
    for t in checkpoint.tensors:
        if views and t.name in views:
            continue
        if bits is None or t.dtype in NON_FLOAT_DTYPES:
            total += t.nbytes
        else:
            total += (t.numel * bits + 7) // 8
    return total


def preflight(
    checkpoint: Checkpoint,
    listing: Mapping[str, int | None] | None = None,
    *,
    dtype: str | None = None,
    max_size: int | None = None,
    fits: int | None = None,
    counts: Counts | None = None,
    listing_complete: bool = True,
) -> Preflight:
    """Costs of ``checkpoint``; ``listing`` maps every file name of the repo or directory to its size.

    ``counts``: the report's counts of this checkpoint, whose bytes by dtype already sum the stored tensors (one
    record per stored tensor; packed ones keep their stored bytes; tied views of one storage once), saving a pass over
    90,000 tensors. Without them, views of one storage are counted per name."""
    from .formats import format_of

    by_format: dict[str, int] = {}
    if listing is None:
        listing = {f.path: f.size for f in checkpoint.files}
    for name, size in sorted(listing.items()):
        fmt = format_of(name.rsplit("/", 1)[-1])
        if fmt is None or name.endswith(".json"):
            continue
        by_format[fmt] = by_format.get(fmt, 0) + (size or 0)
    download = sum(f.size or 0 for f in checkpoint.files)
    views = frozenset(counts.stored_as_views) if counts is not None else frozenset()
    stored = sum(v.bytes for v in counts.by_dtype.values()) if counts is not None else memory_at(checkpoint, None)
    at = memory_at(checkpoint, DTYPES[dtype], views) if dtype else None
    checks = []
    if max_size is not None:
        checks.append(Check("--max-size", max_size, download, "download"))
    if fits is not None:
        checks.append(Check("--fits", fits, at if at is not None else stored, f"memory at {dtype}" if dtype else "memory at stored dtypes"))
    return Preflight(MappingProxyType(by_format), download, stored, dtype, at, tuple(checks), listing_complete)


def to_dict(p: Preflight) -> dict:
    return {
        "bytes_by_format": dict(p.bytes_by_format),
        "bytes_by_format_covers": "every file" if p.listing_complete else "the counted files (repo not listed)",
        "download_bytes": p.download_bytes,
        "memory_bytes": {"stored": p.memory_stored, **({p.dtype: p.memory_at_dtype} if p.dtype else {})},
        "checks": [{"option": c.option, "limit": c.limit, "value": c.value, "measures": c.measures, "ok": c.ok} for c in p.checks],
    }


def rows(p: Preflight) -> list[tuple[str, str]]:
    scope = "all in repo" if p.listing_complete else "counted; repo not listed"
    out = [(f"files {fmt} ({scope})", f"{n:,}") for fmt, n in p.bytes_by_format.items()]
    out.append(("download (counted files)", f"{p.download_bytes:,}"))
    out.append(("memory at stored dtype", f"{p.memory_stored:,}"))
    if p.dtype:
        out.append((f"memory at {p.dtype}", f"{p.memory_at_dtype:,}"))
    for c in p.checks:
        out.append((f"check {c.option}", ("ok" if c.ok else "FAILED") + f" ({c.value:,} vs {c.limit:,})"))
    return out
