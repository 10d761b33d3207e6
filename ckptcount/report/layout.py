"""How a target that holds several models, or an adapter, is shown: its ``layout`` and ``components`` in the JSON,
one table column per component beside the total, and the lines under the table (what was not counted, the
variants present, the adapter's settings and base). Pure functions of :class:`Report`.
"""

from __future__ import annotations

from ..records import Report

KINDS = {
    "diffusers-pipeline": "diffusers pipeline",
    "sentence-transformers": "sentence-transformers model",
    "peft-adapter": "PEFT adapter",
    "gguf-set": "set of GGUF files",
}
# what the JSON of a set of alternatives keeps at the top: the rest is per file, in its component
ALTERNATIVE_KEYS = ("target", "format", "files", "config", "parameters", "findings", "hub", "preflight")


def layout_dict(report: Report) -> dict:
    """The JSON ``layout`` object."""
    lay = report.layout
    d: dict = {"kind": lay.kind, "index_file": lay.index_file}
    if lay.pipeline_class:
        d["pipeline_class"] = lay.pipeline_class
    if lay.kind == "diffusers-pipeline":
        d["variant"] = lay.variant
        d["variants_not_counted"] = [{"component": c, "variant": v, "files": n, "bytes": b} for c, v, n, b in lay.variants]
    if lay.components:
        d["alternatives"] = lay.alternatives
    if lay.not_counted:
        d["not_counted"] = [{"name": n, "why": why} for n, why in lay.not_counted]
    if lay.adapter is not None:
        d["adapter"] = lay.adapter
    return d


def with_layout(d: dict, report: Report, target_dict, **options) -> dict:
    """A target's JSON object with its ``layout`` and ``components``; a set of alternatives keeps at the top only what
    the files share (``parameters``: their common count, or null when they differ)."""
    d["layout"] = layout_dict(report)
    if report.layout.components:
        d["components"] = component_dicts(report, target_dict, **options)
    if not report.layout.alternatives:
        return d
    keep = {k: d[k] for k in ALTERNATIVE_KEYS if k in d}
    same = report.counts.parameters or not any(c.report.counts.parameters for c in report.layout.components)
    keep["parameters"] = report.counts.parameters if same else None
    return {**keep, "layout": d["layout"], "components": d["components"]}


def component_dicts(report: Report, target_dict, **options) -> list[dict]:
    """The JSON ``components``: one full target object each, with its place in the layout."""
    return [
        {"component": c.name, "path": c.path, "role": c.role, "library": c.library, "class": c.class_name, **target_dict(c.report, **options)}
        for c in report.layout.components
    ]


def columns(report: Report, label: str) -> list[tuple[str, Report]]:
    """The table's columns for a report: itself, or the total and each component (each file of a set alone)."""
    lay = report.layout
    if lay is None or not lay.components:
        return [(label, report)]
    comps = [(f"{label}/{c.name}" if c.name else f"{label} (root module)", c.report) for c in lay.components]
    return comps if lay.alternatives else [(f"{label} (total)", report)] + comps


def rows(report: Report, n) -> list[tuple[str, str]]:
    """Rows of the total's column: the layout and, for an adapter, its settings and base share."""
    lay = report.layout
    if lay is None:
        return []
    what = KINDS.get(lay.kind, lay.kind) + (f" {lay.pipeline_class}" if lay.pipeline_class else "")
    out = [("layout", what)]
    if lay.components and not lay.alternatives:
        out.append(("components counted", str(len(lay.components))))
    a = lay.adapter
    if a is not None:
        out.append(("adapter", _adapter_line(a)))
        base = a.get("base") or {}
        if base.get("parameters"):
            out.append(("adapter share of base", f"{base['share_percent']:.4g}% of {n(base['parameters'])}"))
    return out


def _adapter_line(a: dict) -> str:
    parts = [str(a.get("type") or "unknown type")]
    if a.get("dora"):
        parts[0] += " (DoRA)"
    if a.get("rank") is not None:
        parts.append(f"r={a['rank']}")
    if a.get("alpha") is not None:
        parts.append(f"alpha={a['alpha']}")
    return " ".join(parts)


def notes(report: Report, label: str, safe, n) -> list[str]:
    """Lines under the table: what was left out and why, variants present, the adapter's targets and base."""
    lay = report.layout
    if lay is None:
        return []
    out = []
    if lay.components:
        names = ", ".join(safe(c.name or "root module") for c in lay.components)
        how = "each counted alone, never summed" if lay.alternatives else "summed in the total"
        out.append(f"{label}: {KINDS.get(lay.kind, lay.kind)}: {len(lay.components)} components ({names}), {how}")
    if lay.alternatives:
        for c in lay.components:
            size = sum(f.size or 0 for f in c.report.checkpoint.files)
            out.append(f"{label}: {safe(c.name)}: {n(size)} bytes, {n(c.report.counts.parameters)} parameters ({safe(c.report.checkpoint.format)})")
    if lay.alternatives and report.counts.parameters == 0 and any(c.report.counts.parameters for c in lay.components):
        out.append(f"{label}: the files do not hold the same model: their parameters differ")
    for name, why in lay.not_counted:
        out.append(f"{label}: not counted: {safe(name)} ({safe(why)})")
    if lay.variants:
        shown = "; ".join(f"{safe(c)} {safe(v)} ({k} file{'s' if k != 1 else ''}, {n(b)} bytes)" for c, v, k, b in lay.variants)
        counted = f"the {lay.variant} files" if lay.variant else "the plain files"
        pick = "" if lay.variant else " (--variant NAME counts one)"
        out.append(f"{label}: counted {counted}; variants present, not counted: {shown}{pick}")
    a = lay.adapter
    if a is not None:
        targets = a.get("target_modules")
        targets = ", ".join(targets) if isinstance(targets, list) else targets
        line = f"{label}: {_adapter_line(a)} adapter of {safe(str(a.get('base_model')))}: {n(a['parameters'])} parameters in {a['adapted_modules']} adapted modules"
        if targets:
            line += f" (target modules: {safe(str(targets))})"
        if a.get("modules_to_save"):
            line += f"; trained copies: {safe(', '.join(a['modules_to_save']) if isinstance(a['modules_to_save'], list) else str(a['modules_to_save']))}"
        out.append(line)
        base = a.get("base") or {}
        if base.get("read") is False:
            out.append(f"{label}: base not read: {safe(str(base.get('why')))}")
        elif base:
            out.append(
                f"{label}: base {safe(str(base['target']))}: {n(base['parameters'])} parameters; the adapter adds {base['share_percent']:.4g}%;"
                f" {base['checked_modules']} modules checked against it, {base['mismatches']} mismatched"
            )
    return out
