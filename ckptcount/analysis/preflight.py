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

from ..formats.base import format_of
from ..records import NON_FLOAT_DTYPES, Checkpoint, Counts

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
    kv_cache: object | None = None  # kvcache.KVCache, with --context
    kv_unknown: str | None = None  # with --context, why the cache could not be sized

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
    context: int | None = None,
    batch: int = 1,
    kv_dtype: str | None = None,
) -> Preflight:
    """Costs of ``checkpoint``; ``listing`` maps every file name of the repo or directory to its size.

    ``counts``: the report's counts of this checkpoint, whose bytes by dtype already sum the stored tensors (one
    record per stored tensor; packed ones keep their stored bytes; tied views of one storage once), saving a pass over
    90,000 tensors. Without them, views of one storage are counted per name."""
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
    kv = kv_unknown = None
    if context is not None:  # --context: the KV cache (and fixed recurrent state) at context × batch (ckptcount.analysis.kvcache)
        from .kvcache import KVUnknown, for_checkpoint

        try:
            kv = for_checkpoint(checkpoint, context, batch, kv_dtype, dtype)
        except KVUnknown as e:
            kv_unknown = str(e)
    checks = []
    if max_size is not None:
        checks.append(Check("--max-size", max_size, download, "download"))
    if fits is not None:
        measures = f"memory at {dtype}" if dtype else "memory at stored dtypes"
        if kv is not None:
            measures += f" + KV cache at {context:,} tokens x {batch} ({kv.dtype})"
        elif kv_unknown is not None:
            measures += f" (KV cache not included: {kv_unknown})"
        checks.append(Check("--fits", fits, (at if at is not None else stored) + (kv.total_bytes if kv else 0), measures))
    return Preflight(MappingProxyType(by_format), download, stored, dtype, at, tuple(checks), listing_complete, kv, kv_unknown)


def to_dict(p: Preflight) -> dict:
    return {
        "bytes_by_format": dict(p.bytes_by_format),
        "bytes_by_format_covers": "every file" if p.listing_complete else "the counted files (repo not listed)",
        "download_bytes": p.download_bytes,
        "memory_bytes": {"stored": p.memory_stored, **({p.dtype: p.memory_at_dtype} if p.dtype else {})},
        "checks": [{"option": c.option, "limit": c.limit, "value": c.value, "measures": c.measures, "ok": c.ok} for c in p.checks],
        **({"kv_cache": _kv_dict(p)} if p.kv_cache is not None or p.kv_unknown is not None else {}),
    }


def _weights(p: Preflight) -> int:
    return p.memory_at_dtype if p.memory_at_dtype is not None else p.memory_stored


def _kv_dict(p: Preflight) -> dict:
    """``preflight.kv_cache`` (with --context): the cache, and the total with the weights at --dtype (or stored)."""
    if p.kv_cache is None:
        return {"known": False, "reason": p.kv_unknown}
    from .kvcache import to_dict as kv_to_dict

    return {
        "known": True,
        **kv_to_dict(p.kv_cache),
        "weights_bytes": _weights(p),
        "weights_at": p.dtype or "stored",
        "weights_plus_cache_bytes": _weights(p) + p.kv_cache.total_bytes,
    }


def notes(p: Preflight) -> list[str]:
    """Lines under the table: how the KV cache was sized (convention, dtype, each assumption), or why it was not."""
    if p.kv_cache is not None:
        kv = p.kv_cache
        return [f"kv cache: {kv.shape.convention}", f"kv cache dtype {kv.dtype}: {kv.dtype_from}"] + [f"kv cache assumes: {a}" for a in kv.shape.assumptions]
    return [f"kv cache unknown: {p.kv_unknown}"] if p.kv_unknown is not None else []


def rows(p: Preflight) -> list[tuple[str, str]]:
    scope = "all in repo" if p.listing_complete else "counted; repo not listed"
    out = [(f"files {fmt} ({scope})", f"{n:,}") for fmt, n in p.bytes_by_format.items()]
    out.append(("download (counted files)", f"{p.download_bytes:,}"))
    out.append(("memory at stored dtype", f"{p.memory_stored:,}"))
    if p.dtype:
        out.append((f"memory at {p.dtype}", f"{p.memory_at_dtype:,}"))
    kv = p.kv_cache
    if kv is not None:
        out.append((f"kv cache per token ({kv.dtype})", f"{kv.bytes_per_token:,}" + (f" ({kv.bytes_per_token_unwindowed:,} past the windows)" if kv.bytes_per_token_unwindowed != kv.bytes_per_token else "")))
        if kv.fixed_bytes:
            out.append(("kv cache fixed per sequence", f"{kv.fixed_bytes:,}"))
        out.append((f"kv cache at {kv.context:,} x {kv.batch}", f"{kv.total_bytes:,}"))
        out.append((f"weights ({p.dtype or 'stored'}) + kv cache", f"{_weights(p) + kv.total_bytes:,}"))
    elif p.kv_unknown is not None:
        out.append(("kv cache", "unknown"))
    for c in p.checks:
        out.append((f"check {c.option}", ("ok" if c.ok else "FAILED") + f" ({c.value:,} vs {c.limit:,})"))
    return out
