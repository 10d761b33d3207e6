"""Render reports: JSON (the contract), a side-by-side table, or Markdown. Pure functions of :class:`Report`.

Tensor names are untrusted input: every name is passed through :func:`safe` (control characters escaped) and table
cells are plain ``rich.text.Text``, so markup in a name is printed, never interpreted.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import CkptError
from ..records import COMPONENTS, Report
from ..sources.files import CACHE_REPO_PREFIX
from . import layout

SCHEMA_VERSION = 3  # 2: preflight.kv_cache (with --context); 3: layout and components (pipelines, adapters, sets)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """Escape control and bidi-override characters so an untrusted name prints on one line, as itself."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 3) if whole else 0.0


def target_dict(report: Report, *, tensors: bool = False, layers: bool = False) -> dict:
    ck, c = report.checkpoint, report.counts
    d: dict = {
        "target": ck.target,
        "format": ck.format,
        "files": [
            {
                "path": f.path,
                "bytes": f.size,
                "header_bytes": f.header_bytes,
                "bytes_read": f.bytes_read,
                "tensors": f.tensors,
                "header_only": f.header_only,
            }
            for f in ck.files
        ],
        "config": ck.config_file,
        "parameters": c.parameters,
        "stored_elements": c.stored_elements,
        "buffer_elements": c.buffer_elements,
        "untied_parameters": c.untied_parameters,
        "weights": {"tensors": c.weights.tensors, "elements": c.weights.elements, "percent": _pct(c.weights.elements, c.parameters)},
        "biases": {"tensors": c.biases.tensors, "elements": c.biases.elements, "percent": _pct(c.biases.elements, c.parameters)},
        "non_embedding": {
            "nanogpt": {"parameters": c.non_embedding["nanogpt"], "subtracts": "position embeddings"},
            "transformers": {"parameters": c.non_embedding["transformers"], "subtracts": "all embedding tables"},
        },
        "by_component": {k: {"tensors": v.tensors, "elements": v.elements} for k, v in c.by_component.items()},
        "by_dtype": {k: {"tensors": v.tensors, "elements": v.elements, "bytes": v.bytes} for k, v in c.by_dtype.items()},
        "buffers": [{"kind": b.reason, "tensors": b.tensors, "elements": b.elements, "names": list(b.names)} for b in c.buffers],
        "ties": [
            {"names": list(g.names), "stored": list(g.stored), "evidence": g.evidence, "counted_once": g.counted_once}
            for g in report.ties
        ],
        "findings": [{"kind": f.kind, "message": f.message} for f in ck.findings],
    }
    claimed = _claimed_parameters(ck)
    if claimed is not None:  # what the sharded index's author wrote (transformers: model.num_parameters())
        d["index_total_parameters"] = claimed
    if ck.origin:  # Hub targets: which commit was read, and what it cost
        d["hub"] = {k: ck.origin.get(k) for k in ("endpoint", "repo", "revision", "sha", "path", "cached", "requests", "bytes_received")}
        for key in ("local_copy", "unreachable"):  # read without the network: hub._Hub.without_network
            if ck.origin.get(key):
                d["hub"][key] = ck.origin[key]
    if report.preflight is not None:  # Hub targets, or --dtype/--max-size/--fits
        from ..analysis.preflight import to_dict

        d["preflight"] = to_dict(report.preflight)
    if report.quantization is not None:  # quantized checkpoints only (GGUF, GPTQ, AWQ, bitsandbytes, FP8, MXFP4...)
        d["quantization"] = report.quantization
    if report.moe is not None:  # mixture-of-experts models only
        d["moe"] = report.moe
    if report.verification is not None:
        _verification(d, report)
    if report.layout is not None:  # several models, or an adapter: ckptcount.report.layout
        d = layout.with_layout(d, report, target_dict, tensors=tensors, layers=layers)
        if report.layout.alternatives:
            return d
    if layers:
        d["by_layer"] = {k: {"tensors": v.tensors, "elements": v.elements} for k, v in c.by_layer.items()}
    if tensors:
        d["tensors"] = [
            {
                "name": x.tensor.name,
                "file": x.tensor.file,
                "dtype": x.tensor.dtype,
                "shape": list(x.tensor.shape),
                "elements": x.tensor.numel,
                "kind": x.kind,
                "component": x.component,
                "layer": x.layer,
                "reason": x.reason,
            }
            for x in report.classified
        ]
    return d


def _verification(d: dict, report: Report) -> None:
    """--verify-ties: the token embedding against the output head, and a content check on each tie (ckptcount.verify.run)."""
    from ..verify.run import check_dict

    v = report.verification
    if v.embedding_vs_head is not None:
        d["embedding_vs_head"] = {
            "embedding": v.embedding,
            "head": v.head,
            "stored": list(v.stored),
            "verification": check_dict(v.embedding_vs_head),
        }
    for tie in d["ties"]:
        check = v.ties.get(tuple(tie["names"]))
        if check is not None:
            tie["verification"] = check_dict(check)


def _check_note(label: str, check) -> str:
    if check.skipped:
        return f"{label}: verify {' vs '.join(safe(n) for n in check.names)}: not verified: {safe(check.skipped)}"
    if check.orientation == "structural":
        how = "structural (one stored matrix, r = 1 by construction)"
    else:
        r = "n/a" if check.pearson_r is None else f"{check.pearson_r:.9f}"
        diff = "n/a" if check.max_abs_diff is None else f"{check.max_abs_diff:.3g}"
        how = f"r={r}, max |diff| {diff}, {'identical bytes' if check.identical else 'not identical'}"
        how += ", head stored transposed" if check.orientation == "transposed" else ""
    return f"{label}: verify {' vs '.join(safe(n) for n in check.names)}: {how}; {_n(check.bytes_read)} bytes read ({check.backend}, {check.device})"


def to_json(results: list[Report | CkptError], *, tensors: bool = False, layers: bool = False) -> str:
    targets = [
        {"target": r.where or "", "error": str(r), "error_kind": r.kind} if isinstance(r, CkptError) else target_dict(r, tensors=tensors, layers=layers)
        for r in results
    ]
    return indented({"schema_version": SCHEMA_VERSION, "targets": targets})


_encode_str = json.encoder.encode_basestring  # C: a str as a JSON string, non-ASCII kept (ensure_ascii=False)


def indented(obj: object) -> str:
    """``json.dumps(obj, indent=2, ensure_ascii=False)``, byte for byte, for the JSON types reports hold.

    The standard library encodes indented JSON in Python, an interpreted step per value, and a DeepSeek-sized report
    lists 90,000 buffer and metadata names; here a list of strings is joined in one C-level pass, and the pieces of
    the whole document are joined once at the end (not once per level: the names would be copied at each). Scalars,
    keys and anything unusual are encoded by ``json.dumps`` itself; tests compare the two on real reports and
    generated documents."""
    out: list[str] = []
    _pieces(obj, 0, out)
    return "".join(out)


def _pieces(obj: object, level: int, out: list[str]) -> None:
    if isinstance(obj, dict):
        if not obj:
            out.append("{}")
            return
        pad = "\n" + "  " * (level + 1)
        sep = "{" + pad
        for k, v in obj.items():
            out.append(sep)
            out.append(_key(k))
            out.append(": ")
            _pieces(v, level + 1, out)
            sep = "," + pad
        out.append("\n" + "  " * level + "}")
    elif isinstance(obj, (list, tuple)):
        if not obj:
            out.append("[]")
            return
        pad = "\n" + "  " * (level + 1)
        if set(map(type, obj)) == {str}:
            out.append("[" + pad)
            out.append(("," + pad).join(map(_encode_str, obj)))
        else:
            sep = "[" + pad
            for x in obj:
                out.append(sep)
                _pieces(x, level + 1, out)
                sep = "," + pad
        out.append("\n" + "  " * level + "]")
    else:
        out.append(json.dumps(obj, ensure_ascii=False))


def _key(key: object) -> str:
    return _encode_str(key) if type(key) is str else json.dumps({key: 0}, ensure_ascii=False)[1:-4]  # 1 -> "1", as dumps does


def to_jsonl(result: Report | CkptError, *, position: int | None = None, tensors: bool = False, layers: bool = False) -> str:
    """One target as one line of JSON (``--format jsonl``): the same object as in :func:`to_json`'s ``targets``,
    with ``schema_version`` and, for batch audits, ``position`` (its place in the target list)."""
    head: dict = {"schema_version": SCHEMA_VERSION}
    if position is not None:
        head["position"] = position
    if isinstance(result, CkptError):
        body = {"target": result.where or "", "error": str(result), "error_kind": result.kind}
    else:
        body = target_dict(result, tensors=tensors, layers=layers)
    return json.dumps({**head, **body}, ensure_ascii=False, separators=(",", ":"))


def _n(x: int) -> str:
    return f"{x:,}"


# a path in the Hugging Face cache: <...>/models--org--name[/snapshots/<commit>[/sub/path]]
_CACHE_PATH = re.compile(r"(?:^|/)" + CACHE_REPO_PREFIX + r"([^/]+)(?:/snapshots/([^/]+)((?:/[^/]+)*))?/*$")


def _label(target: str) -> str:
    """A target's column title: its last path part; for a path in the Hugging Face cache, the repo it holds and the
    commit's first 7 characters (``openai-community/gpt2@607a30d``), not the folder's name or the commit. ``.`` and
    ``..`` are named by the folder they stand for."""
    if target.rstrip("/").rsplit("/", 1)[-1] in (".", ".."):
        target = os.path.abspath(target)
    if m := _CACHE_PATH.search(target):
        repo, commit, inner = m.groups()
        return repo.replace("--", "/") + (f"@{commit[:7]}" if commit else "") + (inner or "")
    return target.rstrip("/").rsplit("/", 1)[-1] or target


def rows(report: Report, *, layers: bool = False) -> list[tuple[str, str]]:
    """(label, value) rows for one target; the table and Markdown renderers line these up side by side."""
    ck, c = report.checkpoint, report.counts
    files = ", ".join(safe(f.path) + (" (header only)" if f.header_only else "") for f in ck.files)
    if len(ck.files) > 3 or (report.layout is not None and len(report.layout.components) > 1 and not report.layout.alternatives):
        files = f"{len(ck.files)} files" + (" (header only)" if all(f.header_only for f in ck.files) else "")
    buffers = ", ".join(f"{b.tensors} {b.reason}" for b in c.buffers) or "none"
    out = layout.rows(report, _n) + [
        ("files", files),
        ("parameters", _n(c.parameters)),
        ("stored elements", _n(c.stored_elements)),
        ("buffer elements", f"{_n(c.buffer_elements)} ({buffers})" if c.buffers else "0"),
        ("weights", f"{_n(c.weights.elements)} ({_pct(c.weights.elements, c.parameters):.3f}%)"),
        ("biases", f"{_n(c.biases.elements)} ({_pct(c.biases.elements, c.parameters):.3f}%) in {c.biases.tensors} tensors"),
        ("non-embedding (nanoGPT: - position)", _n(c.non_embedding["nanogpt"])),
        ("non-embedding (transformers: - all embeddings)", _n(c.non_embedding["transformers"])),
        ("if tied tensors were untied", _n(c.untied_parameters)),
    ]
    for k in COMPONENTS:
        out.append((f"  {k.replace('_', ' ')}", _n(c.by_component[k].elements)))
    for dtype, v in c.by_dtype.items():
        out.append((f"bytes {dtype}", _n(v.bytes)))
    ties = "; ".join(" = ".join(safe(n) for n in g.names) for g in report.ties)
    out.append(("ties", ties or "none"))
    if report.preflight is not None:
        from ..analysis.preflight import rows as preflight_rows

        out += preflight_rows(report.preflight)
    out += quant_moe_rows(report)
    if layers:
        for layer, v in c.by_layer.items():
            out.append((f"  layer {layer}", _n(v.elements)))
    return out


def _claimed_parameters(ck) -> int | None:
    """``metadata.total_parameters`` of a sharded index, when it is a count: transformers writes its
    ``num_parameters()`` there. Author-written, so never used for the count; shown beside it."""
    claimed = ck.index_metadata.get("total_parameters") if ck.index_metadata else None
    return claimed if type(claimed) is int and claimed >= 0 else None


def notes(report: Report) -> list[str]:
    """Lines under the table: each tie's evidence, each finding, and an index that claims another count."""
    label = _label(report.checkpoint.target)
    out = layout.notes(report, safe(label), safe, _n)
    alternatives = report.layout is not None and report.layout.alternatives  # each file's ties, not the set's
    for name, r in layout.columns(report, label) if alternatives else [(label, report)]:
        out += [f"{safe(name)}: tie {' = '.join(safe(n) for n in g.names)}: {safe(g.evidence)}" for g in r.ties]
    claimed = _claimed_parameters(report.checkpoint)
    if claimed is not None and claimed != report.counts.parameters:
        out.append(
            f"{safe(label)}: the index says {claimed:,} parameters (metadata.total_parameters, written by whoever saved it);"
            f" the headers give {report.counts.parameters:,}"
        )
    origin = report.checkpoint.origin
    if origin.get("local_copy") or origin.get("unreachable"):
        why = f"the Hub could not be reached ({origin['unreachable']})" if origin.get("unreachable") else "offline"
        what = f"the downloaded copy in {origin['local_copy']}" if origin.get("local_copy") else f"the headers cached for commit {origin.get('sha')}"
        out.insert(0, f"{safe(label)}: {safe(why)}: read {safe(what)}")
    for name, r in layout.columns(report, label):  # the target itself, or each component of several models
        v = r.verification
        if v is not None and v.embedding_vs_head is not None:
            out.append(_check_note(safe(name), v.embedding_vs_head))
        elif v is not None and not v.ties:
            what = f"{safe(v.embedding)} has no output head beside it" if v.embedding else "no token embedding or output head"
            out.append(f"{safe(name)}: verify: nothing to compare: {what}, and no tensors are tied")
    if report.preflight is not None:  # --context: how the KV cache was sized
        from ..analysis.preflight import notes as preflight_notes

        out += [f"{safe(label)}: {safe(n)}" for n in preflight_notes(report.preflight)]
    out += [f"{safe(label)}: {f.kind}: {safe(f.message)}" for f in report.checkpoint.findings]
    return out


def _grid(results: list[Report | CkptError], layers: bool) -> tuple[list[str], list[str], list[dict[str, str]]]:
    labels, columns = [], []
    order: list[str] = []
    for r in results:
        if isinstance(r, CkptError):
            continue
        for label, part in layout.columns(r, safe(_label(r.checkpoint.target))):
            labels.append(label)
            col = dict(rows(part, layers=layers))
            columns.append(col)
            for k in col:
                if k not in order:
                    order.append(k)
    return labels, order, columns


CELL_WIDTH = 48  # a value column's widest line; longer cells (several tie names) fold onto more lines


def to_table(results: list[Report | CkptError], *, layers: bool = False, color: bool = False, width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    labels, order, columns = _grid(results, layers)
    # Piped output is never squeezed to a terminal's width: labels stay on one line, long cells (tie names) fold
    # within their column, and the table is as wide as it needs.
    console = Console(width=width or 10_000, color_system="standard" if color else None, record=False, force_terminal=color, file=_Sink())
    lines: list[str] = []
    if labels:
        table = Table(show_header=True, header_style="bold" if color else None, box=None)
        table.add_column("", no_wrap=width is None)
        for label in labels:
            table.add_column(Text(label), justify="right", max_width=CELL_WIDTH, overflow="fold")
        for key in order:
            table.add_row(Text(key), *(Text(col.get(key, "")) for col in columns))
        with console.capture() as cap:
            console.print(table)
        lines.append(cap.get().rstrip("\n"))
        extra = [n for r in results if not isinstance(r, CkptError) for n in notes(r)]
        if extra:
            lines.append("\n".join(extra))
    return "\n".join(lines)


def to_markdown(results: list[Report | CkptError], *, layers: bool = False) -> str:
    labels, order, columns = _grid(results, layers)
    if not labels:
        return ""

    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    out = ["| | " + " | ".join(cell(x) for x in labels) + " |", "|---|" + "---:|" * len(labels)]
    for key in order:
        out.append(f"| {cell(key.strip())} | " + " | ".join(cell(col.get(key, "")) for col in columns) + " |")
    extra = [n for r in results if not isinstance(r, CkptError) for n in notes(r)]
    if extra:
        out.append("")
        out += [f"- {cell(n)}" for n in extra]
    return "\n".join(out)


class _Sink:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def quant_moe_rows(report: Report) -> list[tuple[str, str]]:
    """Table rows for quantized checkpoints (logical parameters, bits per weight, metadata) and MoE (total vs active)."""
    out: list[tuple[str, str]] = []
    q = report.quantization
    if q is not None:
        label = q["method"] + (f" {q['bits']}-bit" if q.get("bits") else "") + (f" ({q['file_type']})" if q.get("file_type") else "")
        out.append(("quantization", safe(str(label))))
        out.append(("stored elements in file", _n(q["stored_elements_in_file"])))
        bpw = q["bits_per_weight"]
        out.append(("bits per quantized weight", f"{bpw:.3f}" if bpw is not None else "n/a"))
        meta = q["metadata"]
        out.append(("quant metadata", f"{_n(meta['elements'])} in {meta['tensors']} tensors ({_n(meta['bytes'])} bytes)"))
    m = report.moe
    if m is not None:
        out.append(("moe experts (per token)", f"{m['experts']} ({m['experts_per_token']})"))
        out.append(("moe active per token", _n(m["active"]) if m["active"] is not None else "unknown"))
    return out
