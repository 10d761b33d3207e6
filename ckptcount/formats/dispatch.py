"""One entry point per checkpoint file: bytes in (any :class:`ByteSource`, local or remote), a :class:`FileRead` out.

Each format module parses and validates its own header; this module only picks the reader by file name and lists the
layouts a checkpoint directory (or Hub repo) can have, in the order a loader would prefer them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..records import FileRecord, Finding, TensorRecord, TieGroup
from .safetensors import ByteSource, read_header


@dataclass(frozen=True)
class FileRead:
    """What one file's header says."""

    record: FileRecord
    tensors: tuple[TensorRecord, ...]
    ties: tuple[TieGroup, ...] = ()
    findings: tuple[Finding, ...] = ()
    data_bytes: int | None = None  # tensor data bytes, each shared storage once (torch zip); None: sum of tensors


@dataclass(frozen=True)
class Layout:
    """A way a checkpoint is laid out: an index naming shards, or a single file."""

    format: str
    index: str | None  # e.g. model.safetensors.index.json
    single: str | None  # e.g. model.safetensors
    suffix: str  # file suffix of this format, for unindexed shard sets


# Preference order when a directory (or repo) holds several formats: safetensors first, as transformers loads it.
LAYOUTS: tuple[Layout, ...] = (
    Layout("safetensors", "model.safetensors.index.json", "model.safetensors", ".safetensors"),
    Layout("gguf", None, None, ".gguf"),  # llama.cpp; split sets -00001-of-0000N.gguf carry split.* keys, no index
    Layout("pytorch", "pytorch_model.bin.index.json", "pytorch_model.bin", ".bin"),  # torch.save zip (or pre-1.6 pickle)
)

# Further suffixes of a format (format_of): torch.save files are .bin (transformers), .pt/.pth, .ckpt (Lightning).
EXTRA_SUFFIXES = {"pytorch": (".pt", ".pth", ".ckpt")}
# torch.save files that hold training state, not weights (transformers Trainer / accelerate checkpoint folders):
# never picked when a directory is counted (name them directly to read them).
AUXILIARY = re.compile(r"^(?:training_args\.bin|optimizer(?:_\d+)?\.(?:pt|bin)|scheduler(?:_\d+)?\.(?:pt|bin)|scaler(?:_\d+)?\.pt|rng_state(?:_\d+)?\.pth)$")


def auxiliary(name: str) -> bool:
    """A file of a checkpoint folder that is training state (optimizer, scheduler, RNG), not the model's weights."""
    return bool(AUXILIARY.match(name.rsplit("/", 1)[-1]))

SHARD_PATTERN = re.compile(r".*-\d{5}-of-\d{5}\.[A-Za-z0-9]+$")


def format_of(name: str) -> str | None:
    """The format a file name announces, or None."""
    for layout in LAYOUTS:
        if name.endswith(layout.suffix) or (layout.index and name.endswith(layout.index.split(".", 1)[1])):
            return layout.format
        if name.endswith(EXTRA_SUFFIXES.get(layout.format, ())):
            return layout.format
    return None


def read_safetensors(source: ByteSource, name: str, where: str) -> FileRead:
    header = read_header(source, where, file=name)
    tensors = header.tensors
    record = FileRecord(
        path=name,
        size=source.size(),
        header_bytes=header.header_bytes,
        tensors=len(tensors),
        header_only=header.header_only,
        metadata=header.metadata,
        bytes_read=getattr(source, "bytes_read", 8 + header.header_bytes),
        format="safetensors",
    )
    return FileRead(record, tensors, data_bytes=header.data_bytes)


READERS = {"safetensors": read_safetensors}

from .gguf import read_gguf  # noqa: E402  (gguf imports FileRead from here lazily)

READERS["gguf"] = read_gguf



def _read_pytorch(source: ByteSource, name: str, where: str) -> FileRead:
    from .pytorch.reader import read_pytorch  # imported on first use: the pickle machine is large, most targets are not .bin

    return read_pytorch(source, name, where)


READERS["pytorch"] = _read_pytorch


def read_file(source: ByteSource, name: str, where: str) -> FileRead:
    """Read one checkpoint file's header with the reader its format needs."""
    fmt = format_of(name) or "safetensors"
    return READERS[fmt](source, name, where)
