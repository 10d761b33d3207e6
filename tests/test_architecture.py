"""The layout stays the map of the pipeline (docs/architecture.md): every module it and the other docs name exists,
module-level imports form no circle, no module grows past ~500 lines, and no function past ~80 unless it is one of
the named exceptions, each with its reason. Read from the source (ast), not by importing."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ckptcount"
MAX_MODULE_LINES = 520  # "~500": a module past it is split by question
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES, each with the reason its docstring or a comment gives.
LONG_FUNCTIONS = {
    "ckptcount.analysis.classify.classify_all": "the per-tensor hot loop with gather's body inline (90,000 tensors)",
    "ckptcount.formats.gguf.parse": "a flat checklist: the header's fields in file order",
    "ckptcount.formats.pytorch.unpickler.PickleMachine.run": "a flat checklist of opcodes: the interpreter's hot loop",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def module_level_imports(name: str, path: Path) -> set[str]:
    """The ckptcount modules ``name`` imports when it is imported: top-level statements only (a lazy import inside a
    function runs later and cannot close a circle at import time)."""
    tree = ast.parse(path.read_text())
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ckptcount"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules() else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ckptcount"))
    found.discard(name)
    return found


def test_module_level_imports_form_no_circle():
    mods = modules()
    graph = {name: module_level_imports(name, path) for name, path in mods.items()}
    # importing a module imports its parent packages first: their __init__ must not import back down
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_circle_check_can_fail(tmp_path, monkeypatch):
    """The checker above on two modules that import each other reports them."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from .b import x\n")
    b.write_text("from .a import y\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: {"ckptcount.t.a": a, "ckptcount.t.b": b})
    monkeypatch.setattr(f"{__name__}._is_package", lambda name: False)
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_module_level_imports_form_no_circle()


def test_no_module_past_about_500_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by question: {long}"


def _functions(tree: ast.AST, prefix: str):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{node.name}", node
            yield from _functions(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")


def test_no_function_past_about_80_lines_but_the_named_flat_ones():
    long = {}
    for name, path in modules().items():
        for qual, node in _functions(ast.parse(path.read_text()), name):
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long[qual] = node.end_lineno - node.lineno + 1
    unexpected = {q: n for q, n in long.items() if q not in LONG_FUNCTIONS}
    assert not unexpected, f"split these, or name them in LONG_FUNCTIONS with their reason: {unexpected}"
    stale = set(LONG_FUNCTIONS) - set(long)
    assert not stale, f"no longer long (or gone): drop them from LONG_FUNCTIONS: {stale}"


DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PATH_REF = re.compile(r"\bckptcount/[\w/]+\.(?:py|json)\b")
DOTTED_REF = re.compile(r"\bckptcount(?:\.[A-Za-z_]\w*)+")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_the_docs_name_exists(doc):
    text = doc.read_text()
    missing = [ref for ref in sorted(set(PATH_REF.findall(text))) if not (ROOT / ref).exists()]
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
    unresolved = []
    for ref in sorted(set(DOTTED_REF.findall(text))):
        parts = ref.split(".")
        # the longest prefix that is a module, then attributes of it
        for cut in range(len(parts), 0, -1):
            mod = ".".join(parts[:cut])
            if mod in modules():
                obj = importlib.import_module(mod)
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    unresolved.append(ref)
                break
        else:
            unresolved.append(ref)
    assert not unresolved, f"{doc.name} names modules or attributes that do not exist: {unresolved}"


def test_the_architecture_doc_names_every_module():
    """docs/architecture.md is the map: each module of the package appears in it, by path."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {m.replace("/", ".")[: -len(".py")] for m in PATH_REF.findall(text) if m.endswith(".py")}
    named |= {n.removesuffix(".__init__") for n in named}
    missing = [name for name, path in modules().items() if path.name != "__init__.py" and name not in named and path.name != "__main__.py"]
    assert not missing, f"docs/architecture.md does not place: {missing}"
