"""Render a :class:`ckptcount.diff.compare.Diff`: JSON with every difference (the contract), or a summary that fits one
screen. Pure functions; names pass through :func:`ckptcount.report.render.safe` and table cells are plain ``Text``.

The table folds the same change repeated across layers into one line (``h.{12..23}.attn.c_attn.weight``: the first
number in a name is the one folded) and shows at most ``LINES`` lines per section; the JSON lists every tensor.
"""

from __future__ import annotations

import re

from .compare import Change, Diff, Side, Tie
from ..report.render import indented, safe

SCHEMA_VERSION = 1  # the diff document's own version (the count report's is report.SCHEMA_VERSION)

LINES = 12  # lines per section of the table


# -------------------------------------------------------------------------------------------------------- JSON


def _side(s: Side) -> dict:
    d = {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "kind": s.kind, "elements": s.elements, "bytes": s.bytes}
    if s.reason:
        d["buffer"] = s.reason
    return d


def _tie(t: Tie) -> dict:
    return {"names": list(t.names), "evidence": t.evidence}


def to_dict(d: Diff) -> dict:
    out: dict = {
        "schema_version": SCHEMA_VERSION,
        "a": {"target": d.a, "format": d.format_a, "tensors": d.tensors_a},
        "b": {"target": d.b, "format": d.format_b, "tensors": d.tensors_b},
        "differs": d.differs,
        "names": {"mapping": d.mapping, "renamed_a": d.renamed_a, "renamed_b": d.renamed_b, "matched": d.matched},
        "ignored": dict(d.ignored),
        "only_a": [_side(s) for s in d.only_a],
        "only_b": [_side(s) for s in d.only_b],
        "buffers_lost": [_side(s) for s in d.buffers_lost],
        "buffers_gained": [_side(s) for s in d.buffers_gained],
        "changed": [{"a": _side(c.a), "b": _side(c.b), "changes": list(c.changes), "transposed": c.transposed} for c in d.changed],
        "ties_lost": [_tie(t) for t in d.ties_lost],
        "ties_gained": [_tie(t) for t in d.ties_gained],
        "tie_aliases": [{"stored_in": t.stored_in, "tensor": _side(t.side), "alias_of": t.alias_of} for t in d.tie_aliases],
        "ties": {"a": [_tie(t) for t in d.ties_a], "b": [_tie(t) for t in d.ties_b]},
        "buffers": {"a": dict(d.buffers_a), "b": dict(d.buffers_b)},
        "counts": {r.key: {"a": r.a, "b": r.b, "delta": r.delta} for r in d.counts},
        "content": None,
    }
    if d.content is not None:
        c = d.content
        out["content"] = {
            "budget": c.budget,
            "bytes_read": c.bytes_read,
            "compared": len(c.tensors) - len(c.skipped),
            "differ": len(c.differ),
            "skipped": len(c.skipped),
            "tensors": [
                {
                    "a": t.a, "b": t.b, "equal": t.equal, "bytes_read": t.bytes_read,
                    "first_difference": t.first_difference, "max_abs_diff": t.max_abs_diff,
                    "sha256_a": t.sha256_a, "sha256_b": t.sha256_b, "skipped": t.skipped,
                }
                for t in c.tensors
            ],
        }
    return out


def to_json(d: Diff) -> str:
    return indented(to_dict(d))


# -------------------------------------------------------------------------------------------------------- table

_FIRST_NUMBER = re.compile(r"(?:(?<=\.)|^)(\d+)(?=\.|$)")


def _fold(items: list[tuple[str, str]]) -> list[str]:
    """(name, what to say about it) pairs -> lines, the same saying over names that differ only in their first
    number folded into one: ``h.{0..11}.ln_1.weight  [768] -> [1024]``. Order: each line where its first name was."""
    groups: dict[tuple[str, str], list[int | None]] = {}
    for name, said in items:
        m = _FIRST_NUMBER.search(name)
        pattern = name[: m.start()] + "\0" + name[m.end() :] if m else name
        groups.setdefault((pattern, said), []).append(int(m.group(1)) if m else None)
    lines = []
    # names outside the layer stack first (embeddings, final norm, head): the few lines that say the most
    for (pattern, said), numbers in sorted(groups.items(), key=lambda kv: len(kv[1]) > 1):
        if "\0" in pattern:
            nums = numbers[0] if len(numbers) == 1 else "{" + _ranges(sorted(set(numbers))) + "}"
            name = pattern.replace("\0", str(nums))
        else:
            name = pattern
        lines.append(f"  {safe(name)}  {said}")
    return lines


def _ranges(nums: list[int]) -> str:
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}..{n}")
            start = None
    return ",".join(out)


def _shape(s: Side) -> str:
    return "[" + ", ".join(map(str, s.shape)) + "]"


def _said(s: Side) -> str:
    return f"{_shape(s)} {s.dtype}" + (f" ({s.reason})" if s.reason else "")


def _change(c: Change) -> str:
    parts = []
    if "shape" in c.changes:
        parts.append(f"{_shape(c.a)} -> {_shape(c.b)}" + (" (transposed)" if c.transposed else ""))
    if "dtype" in c.changes:
        parts.append(f"{c.a.dtype} -> {c.b.dtype}")
    if "kind" in c.changes:
        parts.append(f"{c.a.kind} -> {c.b.kind}")
    renamed = f" (B: {safe(c.b.name)})" if c.b.name != c.a.name else ""
    return renamed + "  " + ", ".join(parts) if renamed else ", ".join(parts)


def _section(title: str, items: list[tuple[str, str]]) -> list[str]:
    if not items:
        return []
    lines = _fold(items)
    more = len(lines) - LINES
    if more > 0:
        lines = lines[:LINES] + [f"  ... {more} more lines (--format json lists every tensor)"]
    return [f"{title}: {len(items)}"] + lines


def _n(x: int) -> str:
    return f"{x:,}"


def _delta(a: int, b: int) -> str:
    return "same" if a == b else f"{b - a:+,}"


LABELS = {
    "tensors": "tensors",
    "parameters": "parameters",
    "stored_elements": "stored elements",
    "buffer_elements": "buffer elements",
    "untied_parameters": "if tied tensors were untied",
    "weights": "weights",
    "biases": "biases",
    "bias_tensors": "bias tensors",
    "tensor_bytes": "tensor bytes",
    "file_bytes": "file bytes",
}


def _ties(ties: tuple[Tie, ...]) -> str:
    return "; ".join(" = ".join(safe(n) for n in t.names) for t in ties) or "none"


def _buffers(kinds) -> str:
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"


def rows(d: Diff) -> list[tuple[str, str, str, str]]:
    """(label, A, B, B - A) rows of the summary table. Components and dtypes are shown where either side has any."""
    out = []
    dtypes = sum(r.key.startswith("bytes.") for r in d.counts)
    bias_tensors = d.count("bias_tensors")
    for r in d.counts:
        if r.key == "bias_tensors" or (r.key == "tensor_bytes" and dtypes == 1):
            continue
        if r.key == "biases":
            out.append(("biases", f"{_n(r.a)} in {bias_tensors.a}", f"{_n(r.b)} in {bias_tensors.b}", _delta(r.a, r.b)))
        elif r.key.startswith("component."):
            if r.a or r.b:
                out.append((f"  {r.key.split('.', 1)[1].replace('_', ' ')}", _n(r.a), _n(r.b), _delta(r.a, r.b)))
        elif r.key.startswith("bytes."):
            out.append((f"bytes {r.key.split('.', 1)[1]}", _n(r.a), _n(r.b), _delta(r.a, r.b)))
        else:
            out.append((LABELS[r.key], _n(r.a), _n(r.b), _delta(r.a, r.b)))
            if r.key == "buffer_elements":
                out.append(("buffers", _buffers(d.buffers_a), _buffers(d.buffers_b), "same" if dict(d.buffers_a) == dict(d.buffers_b) else "changed"))
    ties_same = not (d.ties_lost or d.ties_gained)
    out.append(("ties", _ties(d.ties_a), _ties(d.ties_b), "same" if ties_same else "changed"))
    return out


def verdict(d: Diff) -> str:
    """The last line: what differs, or that nothing did (and what was ignored)."""
    parts = []
    for what, n in (
        ("parameters only in A", len(d.only_a)),
        ("parameters only in B", len(d.only_b)),
        ("buffers lost", len(d.buffers_lost)),
        ("buffers gained", len(d.buffers_gained)),
        ("shape changes", sum("shape" in c.changes for c in d.changed)),
        ("dtype changes", sum("dtype" in c.changes for c in d.changed)),
        ("kind changes", sum("kind" in c.changes for c in d.changed)),
        ("ties lost", len(d.ties_lost)),
        ("ties gained", len(d.ties_gained)),
        ("tensors whose bytes differ", len(d.content.differ) if d.content else 0),
    ):
        if n:
            parts.append(f"{n} {what}")
    params = d.count("parameters")
    if params is not None and params.delta and not parts:
        parts.append(f"parameters {params.delta:+,}")
    ignored = ", ".join(f"{n} {k} differences" for k, n in d.ignored.items() if n)
    if parts:
        return "differs: " + ", ".join(parts) + (f" (ignored: {ignored})" if ignored else "")
    return "no differences in what was compared" + (f" (ignored: {ignored})" if ignored else "")


def to_table(d: Diff, *, color: bool = False, width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..report.render import CELL_WIDTH, _label, _Sink

    head = [
        f"A: {safe(d.a)} ({safe(d.format_a)}, {d.tensors_a:,} tensors)",
        f"B: {safe(d.b)} ({safe(d.format_b)}, {d.tensors_b:,} tensors)",
    ]
    renamed = ", ".join(f"{n:,} of {side}'s names renamed" for side, n in (("A", d.renamed_a), ("B", d.renamed_b)) if n)
    head.append(f"names: {safe(d.mapping)}; {d.matched:,} in both" + (f"; {renamed}" if renamed else ""))
    table = Table(show_header=True, header_style="bold" if color else None, box=None)
    table.add_column("", no_wrap=width is None)
    for label in (f"A: {_label(d.a)}", f"B: {_label(d.b)}", "B - A"):
        table.add_column(Text(safe(label)), justify="right", max_width=CELL_WIDTH, overflow="fold")
    for label, a, b, delta in rows(d):
        table.add_row(Text(label), Text(a), Text(b), Text(delta))
    console = Console(width=width or 10_000, color_system="standard" if color else None, force_terminal=color, file=_Sink())
    with console.capture() as cap:
        console.print(table)
    lines = head + [line.rstrip() for line in cap.get().rstrip("\n").splitlines()]
    lines += _section("only in A", [(s.name, _said(s)) for s in d.only_a])
    lines += _section("only in B", [(s.name, _said(s)) for s in d.only_b])
    lines += _section("buffers lost (only in A)", [(s.name, _said(s)) for s in d.buffers_lost])
    lines += _section("buffers gained (only in B)", [(s.name, _said(s)) for s in d.buffers_gained])
    lines += _section("changed", [(c.a.name, _change(c)) for c in d.changed])
    lines += _section("ties lost (in A, not in B)", [(" = ".join(t.names), f"({t.evidence})") for t in d.ties_lost])
    lines += _section("ties gained (in B, not in A)", [(" = ".join(t.names), f"({t.evidence})") for t in d.ties_gained])
    lines += _section(
        "stored on one side, a tie alias on the other (not a difference)",
        [(t.side.name, f"stored in {t.stored_in.upper()}; the other side ties it to {safe(t.alias_of)}") for t in d.tie_aliases],
    )
    if d.content is not None:
        lines += _content_lines(d)
    lines.append(verdict(d))
    return "\n".join(lines)


def _content_lines(d: Diff) -> list[str]:
    c = d.content
    compared = len(c.tensors) - len(c.skipped)
    out = [f"content: {compared:,} tensors compared, {len(c.differ):,} differ, {len(c.skipped):,} not compared; {c.bytes_read:,} bytes read (budget {c.budget:,})"]
    items = []
    for t in c.differ:
        where = f"first difference at element {t.first_difference:,}" if t.first_difference is not None else "differs"
        diff = f", max |diff| {t.max_abs_diff:.3g}" if t.max_abs_diff is not None else ""
        items.append((t.a, f"{where}{diff}"))
    out += _section("bytes differ", items)
    reasons: dict[str, int] = {}
    for t in c.skipped:
        reasons[t.skipped] = reasons.get(t.skipped, 0) + 1
    out += [f"  not compared: {n} ({safe(r)})" for r, n in list(reasons.items())[:LINES]]
    return out
