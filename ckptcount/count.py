"""Totals from classified tensors and tie groups. Pure: no I/O, testable on hand-built records."""

from __future__ import annotations

from collections import defaultdict
from types import MappingProxyType

from .classify import component_of
from .records import (
    BIAS,
    BUFFER,
    DTYPE_BITS,
    COMPONENTS,
    EMBEDDING_COMPONENTS,
    POSITION_EMBEDDING,
    TOKEN_EMBEDDING,
    WEIGHT,
    BufferGroup,
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


def count(classified: tuple[Classified, ...], ties: tuple[TieGroup, ...]) -> Counts:
    """Parameters = every float tensor that is not a buffer, each name once, each tied group once.

    Nothing else is subtracted. ``untied_parameters`` adds back one copy per extra name of each tied group: the count
    if every tied name were its own tensor (gpt2: + vocab x d). Non-embedding counts follow two published conventions:
    nanoGPT's ``get_num_params`` subtracts the position embedding only; transformers'
    ``num_parameters(exclude_embeddings=True)`` subtracts every embedding table (token, position, token type...).
    """
    dropped, override = counted_names(ties)
    # Names that need more than the common path: tied (dropped or relabelled) and the tie groups' counted members.
    special = dropped | override.keys() | {g.stored[0] for g in ties if g.counted_once and g.stored}
    unique = len({c.tensor.name for c in classified}) == len(classified)  # else: count each name once (seen)
    seen: set[str] = set()
    numel: dict[str, int] = {}
    bits = DTYPE_BITS
    # One pass, aggregating by (kind, component or buffer reason, layer, dtype, counted as a parameter); the totals
    # are rolled up from the few hundred keys. This runs once per tensor of 90,000-tensor repos.
    agg: dict[tuple, list[int]] = {}
    buffers: dict[str, list] = {}
    for c in classified:
        t = c.tensor
        name, dt, n = t.name, t.dtype, t.numel
        nb = t.stored_bytes
        if nb is None:
            nb = n * bits[dt] // 8
        kind = c.kind
        if kind == BUFFER:
            key = (BUFFER, c.reason, None, dt, False)
            ts = buffers.get(c.reason)
            if ts is None:
                buffers[c.reason] = [t]
            else:
                ts.append(t)
        elif unique and name not in special:
            key = (kind, c.component, c.layer, dt, True)
        else:
            numel.setdefault(name, n)
            if name in dropped or name in seen:
                key = (kind, None, None, dt, False)
            else:
                seen.add(name)
                key = (kind, override.get(name, c.component), c.layer, dt, True)
        acc = agg.get(key)
        if acc is None:
            agg[key] = [1, n, nb]
        else:
            acc[0] += 1
            acc[1] += n
            acc[2] += nb
    parameters = stored = buffer_elements = 0
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [tensors, elements]
    by_component: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_layer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    stored_parameters: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    buffer_bytes: dict[str, int] = defaultdict(int)
    for (kind, component, layer, dt, counted), (k, n, nb) in agg.items():
        stored += n
        for acc in (by_dtype[dt], stored_parameters[dt]) if kind != BUFFER else (by_dtype[dt],):
            acc[0] += k
            acc[1] += n
            acc[2] += nb
        if kind == BUFFER:
            buffer_elements += n
            buffer_bytes[component] += nb  # component: the buffer's reason, for buffers
        if not counted:
            continue
        parameters += n
        for acc in (kinds[kind], by_component[component]) + ((by_layer[layer],) if layer is not None else ()):
            acc[0] += k
            acc[1] += n
    untied = parameters + sum((len(g.names) - 1) * numel[g.stored[0]] for g in ties if g.counted_once and g.stored)
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
            for reason, ts in buffers.items()
        ),
        non_embedding=MappingProxyType(
            {
                "nanogpt": parameters - component[POSITION_EMBEDDING].elements,
                "transformers": parameters - embedding,
            }
        ),
        stored_parameters_by_dtype=MappingProxyType({k: DtypeTally(*v) for k, v in sorted(stored_parameters.items())}),
    )


def _layer_key(layer: str) -> tuple:
    stack, _, index = layer.rpartition(".")
    return (stack, int(index))
