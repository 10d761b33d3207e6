"""Totals from classified tensors and tie groups. Pure: no I/O, testable on hand-built records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from types import MappingProxyType

from .classify import component_of, gather, shape_of_name
from ..records import (
    BIAS,
    BUFFER,
    COMPONENTS,
    EMBEDDING_COMPONENTS,
    POSITION_EMBEDDING,
    TOKEN_EMBEDDING,
    WEIGHT,
    BufferGroup,
    Classification,
    Classified,
    Counts,
    DtypeTally,
    Tally,
    TieGroup,
)


def counted_names(ties: tuple[TieGroup, ...]) -> tuple[set[str], dict[str, str]]:
    """Stored names left out of the parameter count (tied duplicates), and component overrides for tied tensors.

    In a group a loader ties, the first stored member (the token embedding when there is one) is counted and the other
    stored members are duplicates. A group that holds the token embedding counts as the token embedding, even when
    the file keeps it under the head's name (``save_model`` keeps the lexicographically first name, e.g. ``lm_head``).
    """
    dropped: set[str] = set()
    override: dict[str, str] = {}
    for g in ties:
        if g.counted_once:
            dropped.update(g.stored[1:])
        if any(component_of(n) == TOKEN_EMBEDDING for n in g.names):
            override.update({n: TOKEN_EMBEDDING for n in g.names})
    return dropped, override


def count(
    classified: tuple[Classified, ...],
    ties: tuple[TieGroup, ...],
    index: Classification | None = None,
    embeddings: Callable[[str], bool] | None = None,
) -> Counts:
    """Parameters = every float tensor that is not a buffer, each name once, each tied group once.

    Nothing else is subtracted. ``untied_parameters`` adds back one copy per extra name of each tied group: the count
    if every tied name were its own tensor (gpt2: + vocab x d). Non-embedding counts follow two published conventions:
    nanoGPT's ``get_num_params`` subtracts the position embedding only; transformers'
    ``num_parameters(exclude_embeddings=True)`` subtracts every ``nn.Embedding`` weight: the embedding tables
    (token, position, token type...) of the name rules, or the model type's list (``embeddings`` below).

    ``index``: classify's :class:`Classification` of these records (gathered here when not given). Its totals count
    every tensor under its own classification; only tied names and names stored twice are re-filed, one by one.
    ``embeddings``: the model type's ``nn.Embedding`` weights (:func:`ckptcount.analysis.transformers_table.embedding_matcher`)
    where they are not the name rules' embedding tables; transformers' convention then subtracts those instead.
    """
    ix = index if index is not None else gather(classified)
    totals = {k: list(v) for k, v in ix.totals.items()}
    uncounted, numel, views = _refile(ix, ties, totals)
    parameters = stored = buffer_elements = 0
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [tensors, elements]
    by_component: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_layer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    stored_parameters: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    buffer_bytes: dict[str, int] = defaultdict(int)
    for dt, (k, n, nb) in uncounted.items():
        stored += n
        for acc in (by_dtype[dt], stored_parameters[dt]):
            acc[0] += k
            acc[1] += n
            acc[2] += nb
    for (kind, component, layer, dt), (k, n, nb) in totals.items():
        if not k:
            continue
        stored += n
        for acc in (by_dtype[dt], stored_parameters[dt]) if kind != BUFFER else (by_dtype[dt],):
            acc[0] += k
            acc[1] += n
            acc[2] += nb
        if kind == BUFFER:
            buffer_elements += n
            buffer_bytes[component] += nb  # component: the buffer's reason, for buffers
            continue
        parameters += n
        for acc in (kinds[kind], by_component[component]) + ((by_layer[layer],) if layer is not None else ()):
            acc[0] += k
            acc[1] += n
    untied = parameters + sum((len(g.names) - 1) * numel[g.stored[0]] for g in ties if g.counted_once and g.stored and g.stored[0] in numel)
    weights, biases = Tally(*kinds[WEIGHT]), Tally(*kinds[BIAS])
    component = {k: Tally(*by_component[k]) if k in by_component else Tally() for k in COMPONENTS}
    embedding = sum(component[k].elements for k in EMBEDDING_COMPONENTS)
    return Counts(
        parameters=parameters,
        stored_elements=stored,
        buffer_elements=buffer_elements,
        untied_parameters=untied,
        weights=weights,
        biases=biases,
        by_component=MappingProxyType(component),
        by_layer=MappingProxyType({k: Tally(*v) for k, v in sorted(by_layer.items(), key=lambda kv: _layer_key(kv[0]))}),
        by_dtype=MappingProxyType({k: DtypeTally(*v) for k, v in sorted(by_dtype.items())}),
        buffers=tuple(
            BufferGroup(reason, len(ts), sum([t.numel for t in ts]), tuple([t.name for t in ts]), buffer_bytes[reason])
            for reason, ts in ix.buffers.items()
        ),
        non_embedding=MappingProxyType(
            {
                "nanogpt": parameters - component[POSITION_EMBEDDING].elements,
                "transformers": parameters - (embedding if embeddings is None else _matched(ix, ties, embeddings)),
            }
        ),
        stored_parameters_by_dtype=MappingProxyType({k: DtypeTally(*v) for k, v in sorted(stored_parameters.items())}),
        stored_as_views=tuple(views),
    )


def _refile(
    ix: Classification, ties: tuple[TieGroup, ...], totals: dict[tuple, list[int]]
) -> tuple[dict[str, list[int]], dict[str, int], list[str]]:
    """Move the tensors that need more than their own classification to where they count, in ``totals``.

    Those are tied names (dropped from the count, or relabelled as the token embedding), the tie groups' counted
    members (their size gives the untied count), and every name when some name is stored twice (the first record in
    file order counts). Returns the stored parameters left out of the count, by dtype; the counted members' sizes
    (parameters only: a tie among buffers adds nothing to the untied parameter count); and the names not stored
    apart. A dropped parameter name that views the storage of its group's counted member (``torch.save`` of tied
    weights: one storage, two names) is not stored twice: it leaves the stored totals as well.
    """
    dropped, override = counted_names(ties)
    uncounted: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    numel: dict[str, int] = {}
    special = dropped | override.keys() | {g.stored[0] for g in ties if g.counted_once and g.stored}
    views: list[str] = []
    if not special and ix.unique:
        return uncounted, numel, views
    chosen = [
        c
        for c in (ix.records if not ix.unique else (c for group in ix.parameters.values() for c in group))
        if c.kind != BUFFER and (not ix.unique or c.tensor.name in special)
    ]
    kept_of = {n: g.stored[0] for g in ties if g.counted_once for n in g.stored[1:]}
    storage_of: dict[str, tuple] = {}
    for c in chosen:
        if c.tensor.storage is not None:
            storage_of.setdefault(c.tensor.name, (c.tensor.file, c.tensor.storage))
    seen: set[str] = set()
    for c in chosen:
        t = c.tensor
        name, n, nb = t.name, t.numel, t.nbytes
        numel.setdefault(name, n)
        acc = totals[(c.kind, c.component, c.layer, t.dtype)]
        acc[0] -= 1
        acc[1] -= n
        acc[2] -= nb
        if name in dropped and t.storage is not None and storage_of.get(kept_of.get(name)) == (t.file, t.storage):
            views.append(name)
            continue  # its elements are the counted member's, stored once
        if name in dropped or name in seen:
            acc = uncounted[t.dtype]
        else:
            seen.add(name)
            acc = totals.setdefault((c.kind, override.get(name, c.component), c.layer, t.dtype), [0, 0, 0])
        acc[0] += 1
        acc[1] += n
        acc[2] += nb
    return uncounted, numel, views


def _layer_key(layer: str) -> tuple:
    """Layers in numeric order within their stack. The number comes from a tensor name: one longer than Python's
    int() takes (4,300 digits) sorts after every other, by its digits, instead of raising."""
    stack, _, index = layer.rpartition(".")
    if len(index) <= 100:
        return (stack, 0, int(index), "")
    return (stack, 1, len(index), index)


def _matched(ix: Classification, ties: tuple[TieGroup, ...], embeddings: Callable[[str], bool]) -> int:
    """Elements of the counted parameters that ``embeddings`` matches (by any name of their tie group)."""
    dropped, _ = counted_names(ties)
    group_of = {n: g.names for g in ties if g.counted_once for n in g.names}
    seen: set[str] = set()
    total = 0
    for records in ix.parameters.values():
        for c in records:
            name = c.tensor.name
            if name in dropped or name in seen:
                continue
            seen.add(name)
            if any(embeddings(shape_of_name(n)) for n in group_of.get(name, (name,))):
                total += c.tensor.numel
    return total
