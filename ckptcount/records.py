"""Frozen records that flow between the stages: readers -> classify -> tying -> count -> report.

Nothing here does I/O. Every stage after the byte readers is a pure function of these records, so each can be tested
on records built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from types import MappingProxyType
from typing import Mapping, NamedTuple

# Bits per element of every dtype the safetensors format defines (safetensors/src/tensor.rs, Dtype::bitsize).
DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E8M0": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }
)

# Integer and boolean tensors are never trainable parameters (torch refuses requires_grad on them).
NON_FLOAT_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})


class _TensorFields(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int = 0
    end: int = 0
    stored_bytes: int | None = None  # set by formats whose dtype alone does not give the size (GGUF quant blocks)
    storage: str | None = None  # the storage a tensor views, for formats that share storage (torch zip)
    numel: int = 1  # the product of shape, computed at construction (prod(()) == 1: a rank-0 scalar is one element)


class TensorRecord(_TensorFields):
    """One tensor as a header declares it. Offsets are relative to the file's data section, end exclusive.

    A named tuple, not a frozen dataclass: headers of 90,000-100,000 tensors build one per tensor, and a tuple is
    built ~5x faster, read faster and is half the memory. ``numel`` is computed from ``shape`` when built
    (``TensorRecord(name, dtype, shape, file, ...)``); parsers that already know it use :func:`tensor_record`.
    """

    __slots__ = ()

    def __new__(cls, name: str, dtype: str, shape: tuple[int, ...], file: str, begin: int = 0, end: int = 0,
                stored_bytes: int | None = None, storage: str | None = None) -> "TensorRecord":
        return _tuple_new(cls, (name, dtype, shape, file, begin, end, stored_bytes, storage, prod(shape)))

    def __getnewargs__(self) -> tuple:  # pickle/copy: numel is recomputed by __new__
        return tuple(self)[:8]

    def _replace(self, **changes) -> "TensorRecord":
        """A copy with ``changes`` (not ``numel``: it follows ``shape``)."""
        if "numel" in changes:
            raise TypeError("numel follows shape; replace shape instead")
        return TensorRecord(*[changes.pop(f, v) for f, v in zip(self._fields[:8], self)], **changes)

    @property
    def nbytes(self) -> int:
        if self.stored_bytes is not None:
            return self.stored_bytes
        return self.numel * DTYPE_BITS[self.dtype] // 8


_tuple_new = tuple.__new__


def tensor_record(name: str, dtype: str, shape: tuple[int, ...], file: str, begin: int, end: int, numel: int) -> TensorRecord:
    """A :class:`TensorRecord` with ``numel`` already computed by the caller's validation (parsers of 100k-tensor
    headers call this once per tensor; it skips ``__new__``'s product)."""
    return _tuple_new(TensorRecord, (name, dtype, shape, file, begin, end, None, None, numel))


@dataclass(frozen=True)
class FileRecord:
    """One file that was read: its size, how many header bytes were read, and what the header declared."""

    path: str  # as shown to the user (relative to the target where possible)
    size: int
    header_bytes: int  # N, the JSON header length; bytes read = 8 + N
    tensors: int
    header_only: bool  # the file is exactly 8 + N bytes: a saved header without data
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bytes_read: int = 0  # counted by the byte source: 8 + N for safetensors
    format: str = "safetensors"
    info: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))  # GGUF key/values (scalars, short strings)
    # for --verify-ties: PyTorch files, storage key -> ("zip", its stored entry's local header offset) or ("at", the
    # absolute offset of its bytes: legacy files); GGUF, "data" -> ("at", where the data section starts). And the
    # tensors whose bytes are not one row-major run of their storage
    storages: Mapping[str, tuple[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    strided: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Finding:
    """Something worth telling the user that does not stop the count (index disagreements, unreferenced shards...)."""

    kind: str
    message: str


@dataclass(frozen=True)
class Checkpoint:
    """Everything the readers learned about one target, before any interpretation."""

    target: str
    format: str
    files: tuple[FileRecord, ...]
    tensors: tuple[TensorRecord, ...]  # every tensor of every file, in file order
    config: Mapping | None = None  # config.json, when the target has one
    config_file: str | None = None
    findings: tuple[Finding, ...] = ()
    ties: tuple["TieGroup", ...] = ()  # ties a reader saw directly (torch zip shared storage); merged by tying
    index_metadata: Mapping = field(default_factory=lambda: MappingProxyType({}))  # a sharded index's "metadata"
    origin: Mapping = field(default_factory=lambda: MappingProxyType({}))  # Hub targets: repo, revision, sha, listing...


# Components, in report order.
TOKEN_EMBEDDING = "token_embedding"
POSITION_EMBEDDING = "position_embedding"
OTHER_EMBEDDING = "other_embedding"
ATTENTION = "attention"
MLP = "mlp"
NORM = "norm"
OUTPUT_HEAD = "output_head"
OTHER = "other"
COMPONENTS = (TOKEN_EMBEDDING, POSITION_EMBEDDING, OTHER_EMBEDDING, ATTENTION, MLP, NORM, OUTPUT_HEAD, OTHER)
EMBEDDING_COMPONENTS = frozenset({TOKEN_EMBEDDING, POSITION_EMBEDDING, OTHER_EMBEDDING})

WEIGHT = "weight"
BIAS = "bias"
BUFFER = "buffer"


class Classified(NamedTuple):
    """A tensor with its interpretation: parameter or buffer, weight or bias, component and layer.

    A named tuple for the reason :class:`TensorRecord` is one: one is built per tensor."""

    tensor: TensorRecord
    kind: str  # WEIGHT | BIAS | BUFFER
    component: str | None  # one of COMPONENTS for parameters; None for buffers
    layer: str | None  # "3", "encoder.3", "decoder.11" ...; None outside the layer stack
    reason: str  # why: the table row or rule that decided it

    @property
    def is_parameter(self) -> bool:
        return self.kind != BUFFER


@dataclass(frozen=True)
class Classification:
    """classify's records, and what the later stages look up, gathered in the same pass over the tensors.

    On a 90,000-tensor repo every pass over the records costs ~0.1 s on a slow CPU; ties and count used to make their
    own. ``totals`` count every tensor once under its own classification; ``count`` re-files only tied and repeated
    names. Built by :func:`ckptcount.analysis.classify.classify_all`, or from records alone by :func:`ckptcount.analysis.classify.gather`.
    """

    records: tuple[Classified, ...]
    names: frozenset[str] | set[str]  # every stored name
    unique: bool  # no name is stored twice
    parameters: Mapping[str, tuple[Classified, ...]]  # the parameters, by component, in order
    totals: Mapping[tuple, list[int]]  # (kind, component | buffer reason, layer | None, dtype) -> [tensors, elements, bytes]
    buffers: Mapping[str, tuple[TensorRecord, ...]]  # the buffer tensors, by reason, in order
    experts: tuple[Classified, ...] = ()  # parameters whose names may be routed experts' ("experts.", "_exps"), in order
    # for each of ``experts``, an object shared by exactly the names equal but for their digits (classify's plan for
    # them), so ckptcount.analysis.moe works out an expert's kind and number position once per such name; () from gather
    expert_shapes: tuple = field(default=(), compare=False, repr=False)
    # the names classify_all's ``buffers_by_last`` rule made buffers (quantization metadata), name -> reason, in order
    buffers_by_last: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)


@dataclass(frozen=True)
class TieGroup:
    """Names that are one tensor in the model, and the evidence that says so.

    ``stored`` are the members present in the files. ``counted_once`` says whether the parameter count keeps only one
    of the stored members (true for evidence a loader acts on; false for a mere candidate).
    """

    names: tuple[str, ...]
    evidence: str
    stored: tuple[str, ...]
    counted_once: bool = True


@dataclass(frozen=True)
class Tally:
    tensors: int = 0
    elements: int = 0


@dataclass(frozen=True)
class DtypeTally:
    tensors: int = 0
    elements: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class BufferGroup:
    """Non-parameter tensors of one kind (causal masks, position ids...), with their names."""

    reason: str
    tensors: int
    elements: int
    names: tuple[str, ...]
    bytes: int = 0


@dataclass(frozen=True)
class Counts:
    parameters: int
    stored_elements: int
    buffer_elements: int
    untied_parameters: int  # what the count would be if every tied name were stored separately
    weights: Tally
    biases: Tally
    by_component: Mapping[str, Tally]
    by_layer: Mapping[str, Tally]
    by_dtype: Mapping[str, DtypeTally]
    buffers: tuple[BufferGroup, ...]
    non_embedding: Mapping[str, int]
    # every parameter tensor as stored, by dtype, tied duplicates included (quantization summaries: bytes per type)
    stored_parameters_by_dtype: Mapping[str, DtypeTally] = field(default_factory=lambda: MappingProxyType({}))
    # tied names left out of the stored totals: views of their group's counted member's storage (torch.save ties)
    stored_as_views: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContentCheck:
    """What ``ckptcount.verify`` read and computed for two stored tensors that are, or might be, one tensor.

    ``orientation`` is "same", "transposed" (the second stored [d, V] against the first's [V, d]) or "structural"
    (one stored matrix: r = 1 by construction, ``stats`` describe it). ``skipped`` says why nothing was compared.
    """

    names: tuple[str, ...]
    orientation: str
    pearson_r: float | None = None
    max_abs_diff: float | None = None
    identical: bool | None = None
    bytes_read: int = 0
    device: str | None = None
    backend: str | None = None
    elements: int = 0
    stats: Mapping[str, Mapping[str, float | None]] = field(default_factory=lambda: MappingProxyType({}))
    skipped: str | None = None


@dataclass(frozen=True)
class Verification:
    """Content checks of one target (``--verify-ties``): the token embedding against the output head, and each tie."""

    embedding: str | None
    head: str | None
    stored: tuple[str, ...]  # which of the two the files hold
    embedding_vs_head: ContentCheck | None
    ties: Mapping[tuple[str, ...], ContentCheck]  # keyed by TieGroup.names


@dataclass(frozen=True)
class Report:
    """The whole answer for one target."""

    checkpoint: Checkpoint
    classified: tuple[Classified, ...]
    ties: tuple[TieGroup, ...]
    counts: Counts
    preflight: object | None = None  # preflight.Preflight: download and memory costs, when asked or for Hub targets
    verification: Verification | None = None  # set by ckptcount.verify.run.verify_report
    quantization: Mapping | None = None  # set by ckptcount.analysis.quant for quantized checkpoints (GGUF, GPTQ, AWQ...)
    moe: Mapping | None = None  # set by ckptcount.analysis.moe for mixture-of-experts models: total vs active per token
    layout: "RepoLayout | None" = None  # a target that holds several models or an adapter: ckptcount.analysis.combine


@dataclass(frozen=True)
class Component:
    """One model of a target that holds several (a pipeline's ``unet``, a sentence-transformers module, one GGUF file
    of a set), with its own full report."""

    name: str  # the pipeline's component name, the module's folder ("" for the root module), the file name
    path: str  # what was counted, relative to the target: a folder or a weight file (or index)
    role: str  # "pipeline-component" | "module" | "quantization"
    library: str | None  # what the layout's index says loads it: "diffusers", "transformers", "sentence_transformers"
    class_name: str | None
    report: Report


@dataclass(frozen=True)
class RepoLayout:
    """How a target that is not one model was read: its kind, its components, and what was not counted and why.

    ``alternatives``: the components are the same model stored several ways (GGUF quantizations): never summed.
    ``adapter``: a PEFT adapter's settings, its parameters' share of the base, and the check against the base."""

    kind: str  # "diffusers-pipeline" | "sentence-transformers" | "peft-adapter" | "gguf-set"
    index_file: str | None  # model_index.json, modules.json, adapter_config.json
    components: tuple[Component, ...] = ()
    not_counted: tuple[tuple[str, str], ...] = ()  # (name, why): a tokenizer, a scheduler, a module without weights
    variants: tuple[tuple[str, str, int, int], ...] = ()  # (component, variant, files, bytes) present but not counted
    variant: str | None = None  # the variant counted (--variant), None for the plain files
    alternatives: bool = False
    adapter: Mapping | None = None
    pipeline_class: str | None = None  # model_index.json's _class_name
