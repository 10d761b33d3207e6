"""Turn a local target (a .safetensors file, a directory, a sharded set) into a :class:`Checkpoint`.

Reads only headers: for each file the 8-byte length and the N header bytes, nothing else. Shard names from an index
are untrusted and must stay inside the checkpoint directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType

from .config import parse_config
from .errors import ShardIndexError, TargetNotFound
from .records import Checkpoint, FileRecord, Finding, TensorRecord
from .safetensors_header import Header, read_header
from .sources import LocalFile, inside

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_INDEX_BYTES = 100_000_000
SHARD_PATTERN = re.compile(r".*-\d{5}-of-\d{5}\.safetensors$")


def _display(target: str, name: str, is_dir: bool) -> str:
    return str(Path(target) / name) if is_dir else target


def _read_small(path: Path, where: str, limit: int) -> bytes:
    source = LocalFile(path, where)
    if source.size() > limit:
        raise ShardIndexError(where, f"file is {source.size()} bytes, over the {limit}-byte limit")
    return source.read(0, source.size())


def parse_index(raw: bytes, where: str) -> tuple[dict[str, str], dict]:
    """The ``weight_map`` (tensor -> shard) and ``metadata`` of a ``*.safetensors.index.json``."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ShardIndexError(where, f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise ShardIndexError(where, "has no 'weight_map' object")
    weight_map = obj["weight_map"]
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise ShardIndexError(where, f"weight_map entry {name!r} is not a file name")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return weight_map, metadata


def cross_check(weight_map: dict[str, str], headers: dict[str, Header], where: str) -> list[Finding]:
    """Disagreements between an index and the shard headers it names. Pure: testable on hand-built records."""
    findings: list[Finding] = []
    located: dict[str, list[str]] = {}
    for shard, header in headers.items():
        for t in header.tensors:
            located.setdefault(t.name, []).append(shard)
    for name, shard in weight_map.items():
        places = located.get(name, [])
        if shard not in places:
            elsewhere = f" (found in {', '.join(places)})" if places else ""
            findings.append(Finding("index-mismatch", f"{where}: maps {name!r} to {shard} but that shard does not hold it{elsewhere}"))
    for name, places in located.items():
        if len(places) > 1:
            findings.append(Finding("duplicate-tensor", f"tensor {name!r} is stored in {len(places)} shards: {', '.join(places)}"))
        elif name not in weight_map:
            findings.append(Finding("index-mismatch", f"{where}: does not list {name!r}, stored in {places[0]}"))
    return findings


def load_local(target: str) -> Checkpoint:
    path = Path(target)
    if not path.exists():
        raise TargetNotFound(target, "no such file or directory")
    is_dir = path.is_dir()
    root = path if is_dir else path.parent
    findings: list[Finding] = []
    index_meta: dict = {}
    weight_map: dict[str, str] | None = None

    if is_dir:
        if (path / INDEX_NAME).exists():
            index_name = INDEX_NAME
        elif (path / SINGLE_NAME).exists():
            index_name = None
            names = [SINGLE_NAME]
        else:
            indexes = sorted(p.name for p in path.glob("*.safetensors.index.json"))
            found = sorted(p.name for p in path.glob("*.safetensors"))
            if len(indexes) == 1:
                index_name = indexes[0]
            elif len(found) == 1:
                index_name, names = None, found
            elif found and all(SHARD_PATTERN.match(n) for n in found):
                index_name, names = None, found
                findings.append(Finding("no-index", f"{len(found)} shards and no index: counted them all"))
            elif found:
                raise TargetNotFound(target, f"{len(found)} .safetensors files and no index; name one: {', '.join(found[:5])}")
            else:
                others = sorted(p.name for p in path.iterdir())[:8]
                raise TargetNotFound(target, f"no .safetensors file here (holds: {', '.join(others) or 'nothing'})")
    else:
        index_name = path.name if path.name.endswith(".index.json") else None
        names = [path.name]

    if index_name is not None:
        where = _display(target, index_name, is_dir)
        weight_map, index_meta = parse_index(_read_small(root / index_name, where, MAX_INDEX_BYTES), where)
        names = sorted(set(weight_map.values()))
        if not names:
            raise ShardIndexError(where, "weight_map is empty")
        named = set(names)
        for p in sorted(root.glob("*.safetensors")):
            if SHARD_PATTERN.match(p.name) and p.name not in named:
                findings.append(Finding("unreferenced-shard", f"{p.name} is not named by {index_name}: not counted"))

    headers: dict[str, Header] = {}
    files: list[FileRecord] = []
    tensors: list[TensorRecord] = []
    for name in names:
        where = _display(target, name, is_dir or index_name is not None)
        file_path = inside(root, name, where) if index_name is not None else root / name
        source = LocalFile(file_path, where)
        header = read_header(source, where)
        headers[name] = header
        tensors.extend(TensorRecord(t.name, t.dtype, t.shape, name, t.begin, t.end) for t in header.tensors)
        files.append(
            FileRecord(
                path=name,
                size=source.size(),
                header_bytes=header.header_bytes,
                tensors=len(header.tensors),
                header_only=header.header_only,
                metadata=header.metadata,
            )
        )

    if weight_map is not None:
        findings.extend(cross_check(weight_map, headers, index_name))
        total_size = index_meta.get("total_size")
        data = sum(h.data_bytes for h in headers.values())
        if isinstance(total_size, int) and total_size != data:
            findings.append(Finding("index-mismatch", f"{index_name}: metadata.total_size is {total_size} but the shards hold {data} data bytes"))

    config = config_file = None
    if (root / "config.json").is_file():
        config_file = "config.json"
        where = _display(target, "config.json", True) if is_dir else str(root / "config.json")
        config = parse_config(_read_small(root / "config.json", where, 16 * 1024 * 1024), where)

    return Checkpoint(
        target=target,
        format="safetensors",
        files=tuple(files),
        tensors=tuple(tensors),
        config=MappingProxyType(config) if config is not None else None,
        config_file=config_file,
        findings=tuple(findings),
        index_metadata=MappingProxyType(dict(index_meta)),
    )
