"""What changed between two checkpoints: a pure function of their two :class:`Report` s, from headers alone.

Tensors are matched by name (:mod:`ckptcount.diff.names`: as stored, without a shared ``model.``-style prefix, or through
the GGUF <-> transformers renaming; the :class:`Diff` says which). Then, for matched names, shape, dtype and kind
(parameter or buffer) are compared; unmatched names are parameters or buffers only in A or only in B; tie groups are
compared as sets of names; and the counts (parameters, weights, biases, components, buffers, bytes) are set side by
side.

A name stored in one checkpoint that the other holds as an absent member of a tie group (``torch.save`` stores a tied
``lm_head.weight`` as a view of the embedding's storage; ``save_pretrained`` leaves it out and the config ties it) is
the same tensor stored differently: it is listed in ``tie_aliases`` and is not a difference. The tie itself is
compared with the tie groups.

``differs``: any tensor only on one side, any change of shape, dtype (unless ignored) or kind, any tie gained or lost,
any buffer gained or lost (unless ignored), a different parameter count, or (with ``--content``) a tensor whose bytes
differ. The count rows alone are information.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .names import Alignment, align
from ..records import BUFFER, COMPONENTS, Report

IGNORABLE = ("dtype", "buffers")


@dataclass(frozen=True)
class Side:
    """One tensor as one checkpoint stores it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str  # weight | bias | buffer
    elements: int
    bytes: int
    reason: str = ""  # classify's reason (a buffer's kind: "causal mask" ...)


@dataclass(frozen=True)
class Change:
    """A tensor both checkpoints hold (by the alignment) whose shape, dtype or kind differs."""

    a: Side
    b: Side
    changes: tuple[str, ...]  # of "shape", "dtype", "kind"

    @property
    def transposed(self) -> bool:
        return "shape" in self.changes and len(self.a.shape) == 2 and self.a.shape[::-1] == self.b.shape


@dataclass(frozen=True)
class TieAlias:
    """A name stored on one side that the other side holds as an absent member of one of its tie groups."""

    stored_in: str  # "a" | "b"
    side: Side
    alias_of: str  # the stored member of the other side's tie group (that side's name)


@dataclass(frozen=True)
class Tie:
    names: tuple[str, ...]  # that side's names
    evidence: str


@dataclass(frozen=True)
class CountRow:
    key: str  # "parameters", "component.attention", "bytes.F32" ...
    a: int
    b: int

    @property
    def delta(self) -> int:
        return self.b - self.a


@dataclass(frozen=True)
class TensorContent:
    """``--content``: the bytes of one tensor both sides hold with the same shape (ckptcount.diff.content)."""

    a: str  # A's name
    b: str  # B's name
    equal: bool | None  # None: not compared (``skipped`` says why)
    bytes_read: int = 0
    first_difference: int | None = None  # the first element (byte, for block-quantized types) that differs
    max_abs_diff: float | None = None  # with numpy, for float dtypes it decodes
    sha256_a: str | None = None
    sha256_b: str | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class Content:
    budget: int
    bytes_read: int
    tensors: tuple[TensorContent, ...]

    @property
    def differ(self) -> tuple[TensorContent, ...]:
        return tuple(t for t in self.tensors if t.equal is False)

    @property
    def skipped(self) -> tuple[TensorContent, ...]:
        return tuple(t for t in self.tensors if t.equal is None)


@dataclass(frozen=True)
class Diff:
    a: str  # targets
    b: str
    format_a: str
    format_b: str
    tensors_a: int
    tensors_b: int
    mapping: str  # how names were matched (ckptcount.diff.names)
    renamed_a: int  # stored names the mapping renamed
    renamed_b: int
    matched: int  # names both sides hold
    only_a: tuple[Side, ...]  # parameters only in A
    only_b: tuple[Side, ...]
    buffers_lost: tuple[Side, ...]  # buffers only in A
    buffers_gained: tuple[Side, ...]
    changed: tuple[Change, ...]
    ties_lost: tuple[Tie, ...]  # A's tie groups B does not have (A's names)
    ties_gained: tuple[Tie, ...]  # B's names
    tie_aliases: tuple[TieAlias, ...]
    counts: tuple[CountRow, ...]
    buffers_a: Mapping[str, int]  # buffer kind -> tensors
    buffers_b: Mapping[str, int]
    ties_a: tuple[Tie, ...]
    ties_b: tuple[Tie, ...]
    ignore: frozenset[str] = frozenset()
    ignored: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # what --ignore left out, how many
    content: Content | None = None

    def count(self, key: str) -> CountRow | None:
        return next((r for r in self.counts if r.key == key), None)

    @property
    def differs(self) -> bool:
        params = self.count("parameters")
        return bool(
            self.only_a or self.only_b or self.changed or self.ties_lost or self.ties_gained
            or self.buffers_lost or self.buffers_gained
            or (params is not None and params.delta != 0)
            or (self.content is not None and self.content.differ)
        )


_NUM = re.compile(r"(\d+)")


def natural(name: str) -> tuple:
    """Sort key that puts h.2 before h.10."""
    return tuple(int(p) if p.isdigit() else p for p in _NUM.split(name))


def _sides(report: Report) -> dict[str, Side]:
    out: dict[str, Side] = {}
    for c in report.classified:  # a name stored twice (a sharded set's duplicate): the last, as a loader keeps
        t = c.tensor
        out[t.name] = Side(t.name, t.dtype, tuple(t.shape), c.kind, t.numel, t.nbytes, c.reason if c.kind == BUFFER else "")
    return out


def _gguf_arch(report: Report) -> tuple[bool, str | None]:
    from ..formats.gguf import architecture

    files = report.checkpoint.files
    return any(f.format == "gguf" for f in files), architecture(files)


def alignment(a: Report, b: Report) -> Alignment:
    """How the names of ``a`` and ``b`` are matched (:func:`ckptcount.diff.names.align` over stored and tie names)."""
    names_a = {t.name for t in a.checkpoint.tensors} | {n for g in a.ties for n in g.names}
    names_b = {t.name for t in b.checkpoint.tensors} | {n for g in b.ties for n in g.names}
    ga, arch_a = _gguf_arch(a)
    gb, arch_b = _gguf_arch(b)
    return align(names_a, names_b, gguf_a=arch_a, gguf_b=arch_b, is_gguf_a=ga, is_gguf_b=gb)


def compare(a: Report, b: Report, *, ignore: frozenset[str] | set[str] = frozenset()) -> Diff:
    """Every difference between ``a`` and ``b``, in name order; ``ignore`` may hold "dtype" and "buffers"."""
    ignore = frozenset(ignore)
    unknown = ignore - set(IGNORABLE)
    if unknown:
        raise ValueError(f"unknown --ignore {sorted(unknown)}: {', '.join(IGNORABLE)}")
    al = alignment(a, b)
    sa = {al.key_a(n): s for n, s in _sides(a).items()}
    sb = {al.key_b(n): s for n, s in _sides(b).items()}
    aliases_a = _aliases(a, al.key_a)
    aliases_b = _aliases(b, al.key_b)
    ignored = {k: 0 for k in sorted(ignore)}

    only_a, only_b, lost, gained, changed, tie_aliases = [], [], [], [], [], []
    for key in sorted(sa.keys() | sb.keys(), key=natural):
        x, y = sa.get(key), sb.get(key)
        if x is not None and y is not None:
            what = tuple(w for w, differ in (("shape", x.shape != y.shape), ("dtype", x.dtype != y.dtype), ("kind", x.kind != y.kind)) if differ)
            if not what:
                continue
            if "buffers" in ignore and BUFFER in (x.kind, y.kind):
                ignored["buffers"] += 1
                continue
            if "dtype" in ignore and "dtype" in what:
                ignored["dtype"] += 1
                what = tuple(w for w in what if w != "dtype")
                if not what:
                    continue
            changed.append(Change(x, y, what))
            continue
        side, here, there_aliases, other = (x, "a", aliases_b, sb) if x is not None else (y, "b", aliases_a, sa)
        alias = there_aliases.get(key)
        if alias is not None and alias in other:
            tie_aliases.append(TieAlias(here, side, other[alias].name))
            continue
        if side.kind == BUFFER:
            if "buffers" in ignore:
                ignored["buffers"] += 1
                continue
            (lost if here == "a" else gained).append(side)
        else:
            (only_a if here == "a" else only_b).append(side)

    ties_a = {frozenset(map(al.key_a, g.names)): Tie(g.names, g.evidence) for g in a.ties}
    ties_b = {frozenset(map(al.key_b, g.names)): Tie(g.names, g.evidence) for g in b.ties}
    return Diff(
        a=a.checkpoint.target,
        b=b.checkpoint.target,
        format_a=a.checkpoint.format,
        format_b=b.checkpoint.format,
        tensors_a=len(a.checkpoint.tensors),
        tensors_b=len(b.checkpoint.tensors),
        mapping=al.description,
        renamed_a=sum(al.key_a(t.name) != t.name for t in a.checkpoint.tensors),
        renamed_b=sum(al.key_b(t.name) != t.name for t in b.checkpoint.tensors),
        matched=len(sa.keys() & sb.keys()),
        only_a=tuple(only_a),
        only_b=tuple(only_b),
        buffers_lost=tuple(lost),
        buffers_gained=tuple(gained),
        changed=tuple(changed),
        ties_lost=tuple(t for k, t in ties_a.items() if k not in ties_b),
        ties_gained=tuple(t for k, t in ties_b.items() if k not in ties_a),
        tie_aliases=tuple(tie_aliases),
        counts=count_rows(a, b),
        buffers_a=MappingProxyType({g.reason: g.tensors for g in a.counts.buffers}),
        buffers_b=MappingProxyType({g.reason: g.tensors for g in b.counts.buffers}),
        ties_a=tuple(ties_a.values()),
        ties_b=tuple(ties_b.values()),
        ignore=ignore,
        ignored=MappingProxyType(ignored),
    )


def _aliases(report: Report, key) -> dict[str, str]:
    """key of each absent member of a tie group -> key of the group's first stored member."""
    stored = {t.name for t in report.checkpoint.tensors}
    out = {}
    for g in report.ties:
        if not g.stored or not g.counted_once:
            continue
        for n in g.names:
            if n not in stored:
                out[key(n)] = key(g.stored[0])
    return out


def count_rows(a: Report, b: Report) -> tuple[CountRow, ...]:
    """The counts of both reports, side by side, in the order the table shows them."""
    ca, cb = a.counts, b.counts
    rows = [
        CountRow("tensors", len(a.checkpoint.tensors), len(b.checkpoint.tensors)),
        CountRow("parameters", ca.parameters, cb.parameters),
        CountRow("stored_elements", ca.stored_elements, cb.stored_elements),
        CountRow("buffer_elements", ca.buffer_elements, cb.buffer_elements),
        CountRow("untied_parameters", ca.untied_parameters, cb.untied_parameters),
        CountRow("weights", ca.weights.elements, cb.weights.elements),
        CountRow("biases", ca.biases.elements, cb.biases.elements),
        CountRow("bias_tensors", ca.biases.tensors, cb.biases.tensors),
    ]
    for k in COMPONENTS:
        rows.append(CountRow(f"component.{k}", ca.by_component[k].elements, cb.by_component[k].elements))
    for dtype in sorted(ca.by_dtype.keys() | cb.by_dtype.keys()):
        da, db = ca.by_dtype.get(dtype), cb.by_dtype.get(dtype)
        rows.append(CountRow(f"bytes.{dtype}", da.bytes if da else 0, db.bytes if db else 0))
    rows.append(CountRow("tensor_bytes", sum(v.bytes for v in ca.by_dtype.values()), sum(v.bytes for v in cb.by_dtype.values())))
    rows.append(CountRow("file_bytes", sum(f.size for f in a.checkpoint.files), sum(f.size for f in b.checkpoint.files)))
    return tuple(rows)
