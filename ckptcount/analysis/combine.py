"""One report for a target that holds several models: the components' reports summed (a pipeline, a
sentence-transformers model), or set side by side and never summed (GGUF quantizations of one model).

Pure: Reports in, a Report out. Each component keeps its own full report (``layout.components``); the total's files,
tensors and ties carry the component's folder in front of their names (``unet/diffusion_pytorch_model.safetensors``,
``unet/conv_in.weight``), so they stay distinct and a tensor's file is still the path it is read from.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from ..records import (
    COMPONENTS,
    BufferGroup,
    Checkpoint,
    Classified,
    Component,
    Counts,
    DtypeTally,
    FileRecord,
    Finding,
    RepoLayout,
    Report,
    Tally,
    TieGroup,
)


def folder_of(path: str) -> str:
    """The folder of a component's path: a weight file's or index's folder, a module folder itself (no dot in its
    name, as sentence-transformers names them: ``2_Dense``), "" for a file at the top or the target itself."""
    name = path.rsplit("/", 1)
    return name[0] if len(name) == 2 else ("" if "." in path or not path else path)


def combine(target: str, layout: RepoLayout, findings: tuple[Finding, ...] = (), origin=None) -> Report:
    """The report of ``target`` from its components (``layout.components``, each with its report)."""
    comps = layout.components
    files: list[FileRecord] = []
    tensors, classified, ties, notes = [], [], [], list(findings)
    for c in comps:
        ck, pre = c.report.checkpoint, _prefix(c)
        files += [_file(f, pre) for f in ck.files]
        notes += [said_by(c, f) for f in ck.findings]
        if layout.alternatives:
            continue
        tensors += [t._replace(name=pre + t.name, file=pre + t.file) for t in ck.tensors]
        classified += [Classified(x.tensor._replace(name=pre + x.tensor.name, file=pre + x.tensor.file), x.kind, x.component, x.layer, x.reason) for x in c.report.classified]
        ties += [TieGroup(tuple(pre + n for n in g.names), g.evidence, tuple(pre + n for n in g.stored), g.counted_once) for g in c.report.ties]
    formats = sorted({f for c in comps for f in c.report.checkpoint.format.split("+")})
    checkpoint = Checkpoint(
        target=target,
        format="+".join(formats),
        files=tuple(files),
        tensors=tuple(tensors),
        config_file=layout.index_file,
        findings=tuple(notes),
        origin=MappingProxyType(dict(origin or {})),
    )
    counts = common(comps) if layout.alternatives else add([(_prefix(c), c.report.counts) for c in comps])
    return Report(checkpoint=checkpoint, classified=tuple(classified), ties=tuple(ties), counts=counts, layout=layout)


def said_by(c: Component, f: Finding) -> Finding:
    """A component's finding as the total says it: named after the component."""
    return Finding(f.kind, f"{c.name or 'root module'}: {f.message}")


def _prefix(c: Component) -> str:
    folder = folder_of(c.path)
    return f"{folder}/" if folder else ""


def _file(f: FileRecord, pre: str) -> FileRecord:
    return replace(f, path=pre + f.path) if pre else f


def common(comps) -> Counts:
    """Alternatives: the counts they share when every one gives the same parameters, weights and biases (the
    quantizations of one model); else an empty tally (each is in its component)."""
    first = comps[0].report.counts
    same = all((c.report.counts.parameters, c.report.counts.weights, c.report.counts.biases) == (first.parameters, first.weights, first.biases) for c in comps)
    return first if same else add([])


def add(parts: list[tuple[str, Counts]]) -> Counts:
    """Counts summed; per-layer rows and buffer names carry each part's prefix."""

    def tally(values) -> Tally:
        values = list(values)
        return Tally(sum(v.tensors for v in values), sum(v.elements for v in values))

    def dtypes(maps) -> dict:
        out: dict[str, list[int]] = {}
        for m in maps:
            for k, v in m.items():
                acc = out.setdefault(k, [0, 0, 0])
                acc[0] += v.tensors
                acc[1] += v.elements
                acc[2] += v.bytes
        return {k: DtypeTally(*v) for k, v in out.items()}

    counts = [c for _, c in parts]
    keys: list[str] = []
    for c in counts:
        keys += [k for k in c.by_component if k not in keys]
    by_layer = {}
    for pre, c in parts:
        for layer, v in c.by_layer.items():
            by_layer[f"{pre}{layer}"] = v
    nonemb: dict[str, int] = {}
    for c in counts:
        for k, v in c.non_embedding.items():
            nonemb[k] = nonemb.get(k, 0) + v
    return Counts(
        parameters=sum(c.parameters for c in counts),
        stored_elements=sum(c.stored_elements for c in counts),
        buffer_elements=sum(c.buffer_elements for c in counts),
        untied_parameters=sum(c.untied_parameters for c in counts),
        weights=tally(c.weights for c in counts),
        biases=tally(c.biases for c in counts),
        by_component=MappingProxyType({k: tally(c.by_component[k] for c in counts if k in c.by_component) for k in (keys or COMPONENTS)}),
        by_layer=MappingProxyType(by_layer),
        by_dtype=MappingProxyType(dtypes(c.by_dtype for c in counts)),
        buffers=tuple(BufferGroup(b.reason, b.tensors, b.elements, tuple(pre + n for n in b.names), b.bytes) for pre, c in parts for b in c.buffers),
        non_embedding=MappingProxyType(nonemb or {"nanogpt": 0, "transformers": 0}),
        stored_parameters_by_dtype=MappingProxyType(dtypes(c.stored_parameters_by_dtype for c in counts)),
        stored_as_views=tuple(pre + n for pre, c in parts for n in c.stored_as_views),
    )
