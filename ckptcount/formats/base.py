"""What every reader returns (:class:`FileRead`) and what a file name announces: its format, the layouts a checkpoint
folder or repo can have, shard names, and training-state files that are not weights.

Readers import :class:`FileRead` from here, and :mod:`.dispatch` imports the readers, so no module imports its
importer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..records import FileRecord, Finding, TensorRecord, TieGroup


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
# diffusers names a variant's index after the plain one: diffusion_pytorch_model.safetensors.index.fp16.json
VARIANT_INDEX = re.compile(r"\.(?:safetensors|bin)\.index\.[A-Za-z0-9_-]+\.json$")


def is_index(name: str) -> bool:
    """A sharded set's index (``model.safetensors.index.json``), or a variant's (``….index.fp16.json``)."""
    return name.endswith(".index.json") or bool(VARIANT_INDEX.search(name))


def format_of(name: str) -> str | None:
    """The format a file name announces, or None."""
    for layout in LAYOUTS:
        if name.endswith(layout.suffix) or (layout.index and name.endswith(layout.index.split(".", 1)[1])):
            return layout.format
        if name.endswith(EXTRA_SUFFIXES.get(layout.format, ())):
            return layout.format
    return None
