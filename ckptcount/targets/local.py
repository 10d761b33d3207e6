"""Turn a local target (a checkpoint file, a directory, a sharded set) into a :class:`Checkpoint`.

Reads only headers. Shard names from an index are untrusted and must stay inside the checkpoint directory; only
regular files are opened.
"""

from __future__ import annotations

import json
from functools import cache
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType

from ..support import fastjson
from ..analysis.config import parse_config
from ..errors import ConfigError, NothingToCount, ShardIndexError, TargetNotFound
from ..formats.base import LAYOUTS, SHARD_PATTERN, FileRead, Layout, auxiliary, format_of, is_index
from ..formats.dispatch import read_file
from ..formats.gguf import split_findings, split_names
from ..records import Checkpoint, Finding, TensorRecord
from ..sources.files import LocalFile, cache_snapshot, entries, inside, real_roots

_NAME = attrgetter("name")
MAX_INDEX_BYTES = 100_000_000
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _read_small(path: Path, where: str, limit: int, error: type = ShardIndexError) -> bytes:
    source = LocalFile(path, where)
    if source.size() > limit:
        raise error(where, f"file is {source.size()} bytes, over the {limit}-byte limit")
    return source.read(0, source.size())


@cache
def _msgspec() -> tuple:
    """msgspec and the index decoder, made on first use (:mod:`ckptcount.support.fastjson`)."""
    import msgspec

    # a weight_map of strings; metadata left to json (it may hold any value; "Raw | None" would read as null only).
    # No other key: msgspec would skip its value without the checks json makes (its 4,300-digit integer limit).
    fields = [("weight_map", dict[str, str]), ("metadata", msgspec.Raw, None)]
    Index = msgspec.defstruct("Index", fields, forbid_unknown_fields=True, gc=False)
    return msgspec, msgspec.json.Decoder(Index)


def _decode_index(raw: bytes) -> dict:
    """The index as ``json.loads`` would decode it, as far as :func:`parse_index` looks: its weight_map and metadata.

    An index without JSON escapes, of weight_map and metadata only, whose weight_map maps strings to strings, is
    decoded by msgspec (about twice as fast for 90,000 names); repeated keys keep their last value, as in ``json``.
    Anything else, valid or not, is left to ``json``, whose result or error is the reference."""
    fast = _fast_index(raw) if fastjson.worth_it(len(raw)) else None
    return fast if fast is not None else json.loads(raw.decode("utf-8"))


def _fast_index(raw: bytes) -> dict | None:
    """:func:`_decode_index`'s msgspec path; None for an index it leaves to ``json``."""
    if b"\\" in raw:
        return None
    msgspec, decoder = _msgspec()
    try:
        index = decoder.decode(raw.decode("utf-8"))
        metadata = json.loads(bytes(index.metadata)) if index.metadata is not None else None
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    return {"weight_map": index.weight_map, "metadata": metadata}


def parse_index(raw: bytes, where: str) -> tuple[dict[str, str], dict]:
    """The ``weight_map`` (tensor -> shard) and ``metadata`` of a sharded checkpoint's ``*.index.json``."""
    try:
        obj = _decode_index(raw)
    except (ValueError, RecursionError) as e:  # ValueError: also an integer literal over the 4300-digit limit
        raise ShardIndexError(where, f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise ShardIndexError(where, "has no 'weight_map' object")
    weight_map = obj["weight_map"]
    if set(map(type, weight_map.values())) - {str}:  # one C-level pass; the message then names the first entry
        name = next(name for name, shard in weight_map.items() if not isinstance(shard, str))
        raise ShardIndexError(where, f"weight_map entry {name!r} is not a file name")
    if not weight_map:
        raise ShardIndexError(where, "weight_map is empty")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return weight_map, metadata


def unreferenced_shards(present, named: list[str], index: str) -> list[Finding]:
    """Shard-named files of the index's format (``present``: every file name there) that the index does not name."""
    fmt, known = format_of(named[0]), set(named)
    return [
        Finding("unreferenced-shard", f"{n} is not named by {index}: not counted")
        for n in sorted(present)
        if SHARD_PATTERN.match(n) and format_of(n) == fmt and n not in known
    ]


def agrees(weight_map: dict[str, str], reads: dict[str, FileRead]) -> bool:
    """Whether :func:`cross_check` finds nothing, decided by C-level passes (the common case, 90,000 names).

    Every stored name mapped by the index to the shard that holds it means: no name is stored in two shards (the
    index names one) and none is missing from the index; with as many stored tensors as the index has entries, the
    index names nothing that is not stored either. A shard's names are looked up all at once, without building a
    name -> shard map of the whole set."""
    lookup = weight_map.get
    return sum(len(read.tensors) for read in reads.values()) == len(weight_map) and all(
        set(map(lookup, map(_NAME, read.tensors))) <= {shard} for shard, read in reads.items()
    )


def cross_check(weight_map: dict[str, str], reads: dict[str, FileRead], index: str) -> list[Finding]:
    """Disagreements between an index and the shard headers it names. Pure: testable on hand-built records."""
    if agrees(weight_map, reads):
        return []
    findings: list[Finding] = []
    located: dict[str, str] = {}  # name -> first shard holding it
    again: dict[str, list[str]] = {}  # names stored in more than one shard -> every shard
    for shard, read in reads.items():
        for t in read.tensors:
            first = located.setdefault(t.name, shard)
            if first != shard or t.name in again:
                again.setdefault(t.name, [first]).append(shard)

    def places(name: str) -> list[str]:
        return again.get(name) or ([located[name]] if name in located else [])

    for name, shard in weight_map.items():
        where = places(name)
        if shard not in where:
            elsewhere = f" (found in {', '.join(where)})" if where else ""
            findings.append(Finding("index-mismatch", f"{index} maps {name!r} to {shard} but that shard does not hold it{elsewhere}"))
    for name in located:
        where = places(name)
        if len(where) > 1:
            findings.append(Finding("duplicate-tensor", f"tensor {name!r} is stored in {len(where)} shards: {', '.join(where)}"))
        elif name not in weight_map:
            findings.append(Finding("index-mismatch", f"{index} does not list {name!r}, stored in {where[0]}"))
    return findings


def assemble(
    target: str,
    reads: dict[str, FileRead],
    *,
    config: dict | None,
    config_file: str | None,
    index: str | None = None,
    weight_map: dict[str, str] | None = None,
    index_meta: dict | None = None,
    findings: list[Finding] | None = None,
) -> Checkpoint:
    """Combine the file reads of one target (local or remote) into a Checkpoint, cross-checking the index."""
    findings = list(findings or [])
    for read in reads.values():
        findings.extend(read.findings)
    if any(r.record.format == "gguf" for r in reads.values()):  # split sets are self-describing: check split.* keys
        findings.extend(split_findings([r.record for r in reads.values()]))
    if weight_map is not None and index is not None:
        findings.extend(cross_check(weight_map, reads, index))
        total_size = (index_meta or {}).get("total_size")
        data = sum(sum(t.nbytes for t in r.tensors) if r.data_bytes is None else r.data_bytes for r in reads.values())
        if isinstance(total_size, int) and total_size != data:
            findings.append(Finding("index-mismatch", f"{index}: metadata.total_size is {total_size} but the shards hold {data} data bytes"))
    formats = sorted({r.record.format for r in reads.values()})
    tensors: list[TensorRecord] = [t for r in reads.values() for t in r.tensors]
    return Checkpoint(
        target=target,
        format="+".join(formats),
        files=tuple(r.record for r in reads.values()),
        tensors=tuple(tensors),
        config=MappingProxyType(config) if config is not None else None,
        config_file=config_file,
        findings=tuple(findings),
        ties=tuple(g for r in reads.values() for g in r.ties),
        index_metadata=MappingProxyType(dict(index_meta or {})),
    )


def choose(names: set[str], where: str, folders: list[str] = ()) -> tuple[Layout, str | None, list[str], list[Finding]]:
    """Pick what to count among the file names of a directory or repo: (layout, index, files, findings).

    ``folders``: the folders beside those files, only to name them when there is nothing to count.

    Preference: the first layout (see ``formats.LAYOUTS``) with an index, else its single file, else a lone file or
    an unindexed shard set of that format. Formats present but not counted are reported as findings.
    """
    findings: list[Finding] = []
    chosen = None
    for layout in LAYOUTS:
        of_format = sorted(n for n in names if format_of(n) == layout.format and not n.endswith(".json") and not auxiliary(n))
        indexes = sorted(n for n in names if layout.index and n.endswith(layout.index.split(".", 1)[1]) and n.endswith(".index.json"))
        if layout.index in names:
            pick = (layout, layout.index, [])
        elif layout.single in names:
            pick = (layout, None, [layout.single])
        elif len(indexes) == 1:
            pick = (layout, indexes[0], [])
        elif len(of_format) == 1:
            pick = (layout, None, of_format)
        elif of_format and all(SHARD_PATTERN.match(n) for n in of_format):
            pick = (layout, None, of_format)
            if layout.index is not None:  # GGUF split sets have no index by design
                findings.append(Finding("no-index", f"{len(of_format)} {layout.format} shards and no index: counted them all"))
        elif of_format and chosen is not None:  # another format was already chosen: only say these are ignored
            pick = (layout, None, of_format)
        elif of_format:
            raise NothingToCount(where, f"{len(of_format)} {layout.suffix} files and no index; name one: {', '.join(of_format[:5])}")
        else:
            continue
        if chosen is None:
            chosen = pick
        else:
            findings.append(Finding("ignored-format", f"also holds {layout.format} files ({len(of_format) or 1}): not counted"))
    if chosen is None:
        others = (sorted(names) + sorted(f"{f}/" for f in folders))[:8]
        raise NothingToCount(where, f"no checkpoint file here (holds: {', '.join(others) or 'nothing'})")
    return chosen[0], chosen[1], chosen[2], findings


def load_local(target: str) -> Checkpoint:
    path = Path(target)
    if not path.exists():
        raise TargetNotFound(target, "no such file or directory")
    is_dir = path.is_dir()
    if is_dir and (snapshot := cache_snapshot(path, target)) is not None:
        path = snapshot  # the report keeps the target as given
    root = path if is_dir else path.parent
    findings: list[Finding] = []
    index = weight_map = None
    index_meta: dict = {}
    held = None  # the folder's listing, when it was read

    if is_dir:
        held = entries(path, target)
        files = {p.name for p in held if p.is_file()}
        _, index, names, findings = choose(files, target, [p.name for p in held if p.name not in files and p.is_dir()])
    elif is_index(path.name):
        index, names = path.name, []
    else:
        names = [path.name]
        if format_of(path.name) == "gguf" and (siblings := split_names(path.name)):
            names, is_dir = siblings, True  # one shard of a split GGUF names the whole set, as in llama.cpp

    def where(name: str) -> str:
        return str(root / name) if is_dir or index is not None else target

    if index is not None:
        weight_map, index_meta = parse_index(_read_small(root / index, where(index), MAX_INDEX_BYTES), where(index))
        names = sorted(set(weight_map.values()))
        listing = held if held is not None else entries(root, str(root))  # a directory target was listed already
        findings.extend(unreferenced_shards((p.name for p in listing), names, index))

    reads: dict[str, FileRead] = {}
    roots = real_roots(root) if index is not None else None
    index_where = where(index) if index is not None else None
    for name in names:
        file_path = inside(root, name, index_where, roots) if index is not None else root / name
        shown = where(name)
        reads[name] = read_file(LocalFile(file_path, shown), name, shown)

    config = config_file = None
    if (root / "config.json").is_file():
        config_file = "config.json"
        config = parse_config(_read_small(root / "config.json", where("config.json"), MAX_CONFIG_BYTES, ConfigError), where("config.json"))

    return assemble(
        target, reads, config=config, config_file=config_file, index=index, weight_map=weight_map, index_meta=index_meta, findings=findings
    )
