"""Dump every output ckptcount gives, to show that a refactor changed none of them.

    python scripts/dump_outputs.py OUT            # fixtures and README examples, through the CLI
    python scripts/dump_outputs.py OUT --suite    # also every report and rendering the test suite produces
    diff -r BEFORE AFTER                          # a behaviour-preserving change leaves no difference

The fixtures part runs `ckptcount --format json --tensors --layers` (and the table) on each bundled fixture, and every
README console example, in-process through click's CliRunner.

The suite part runs pytest with this file as a plugin (`-p dump_outputs`): it wraps the public entry points and the
renderers (`audit`, `audit_many`, `audit_iter`, `load`, `analyse`, `diff_targets`, `to_json`, `to_jsonl`, `to_table`,
`to_markdown`, the diff renderers) wherever the package binds them, and writes what each returns, per test, as JSON
lines. Paths under pytest's temporary folder and the test servers' ports are normalised; hypothesis runs derandomised
without its example database, and the lines are sorted (batch audits finish in thread order), so two runs of
the same tree give the same dump.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = ("audit", "audit_many", "audit_iter", "load", "analyse", "diff_targets")
RENDERERS = ("to_json", "to_jsonl", "to_table", "to_markdown")
BASETEMP = "/tmp/ckptcount-dump-basetemp"


def dump_cli(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_examples import BLOCK, run

    out.mkdir(parents=True, exist_ok=True)
    for fixture in sorted((ROOT / "fixtures").iterdir()):
        name = f"fixtures/{fixture.name}"
        (out / f"fixture-{fixture.name}.json").write_text(run(f"ckptcount {name} --format json --tensors --layers"))
        (out / f"fixture-{fixture.name}.txt").write_text(run(f"ckptcount {name} --layers"))
    for n, m in enumerate(BLOCK.finditer((ROOT / "README.md").read_text())):
        (out / f"readme-{n:02d}.txt").write_text(f"$ {m.group(1)}\n{run(m.group(1))}")


def dump_suite(out: Path) -> int:
    env = dict(os.environ, CKPTCOUNT_DUMP=str(out / "suite.jsonl"), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "scripts")]))
    (out / "suite.jsonl").unlink(missing_ok=True)
    # one temporary folder name for every run: payloads that embed a tmp path (the hostile pickles) keep their length
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "dump_outputs", "-p", "no:cacheprovider", f"--basetemp={BASETEMP}"]
    return subprocess.call(cmd, cwd=ROOT, env=env)


# --- the pytest plugin ---------------------------------------------------------------------------------------------

_current = {"test": ""}
_basetemp: list[str] = []
PORT = re.compile(r"(127\.0\.0\.[12]|localhost):\d+")
FUZZ_DIR = re.compile(r"ckptcount-fuzz-[A-Za-z0-9_]+")  # the fuzz tests' mkdtemp folders
OBJECT_ID = re.compile(r"'\d{10,}'")  # legacy torch.save storage keys, which are id()s of the saving process


def _normal(text: str) -> str:
    for base in _basetemp:
        text = text.replace(base, "<TMP>")
    return OBJECT_ID.sub("'<ID>'", FUZZ_DIR.sub("ckptcount-fuzz-<TMP>", PORT.sub(r"\1:<PORT>", text)))


def _record(kind: str, value) -> None:
    path = os.environ.get("CKPTCOUNT_DUMP")
    if not path:
        return
    from ckptcount.errors import CkptError
    from ckptcount.records import Report

    if isinstance(value, (Report, CkptError)):
        value = _RAW["to_json"]([value], tensors=True, layers=True)
    elif isinstance(value, list) and value and all(isinstance(v, (Report, CkptError)) for v in value):
        value = _RAW["to_json"](value, tensors=True, layers=True)
    elif not isinstance(value, str):
        value = type(value).__name__
    line = {"test": _current["test"], "kind": kind, "value": _normal(value)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


_RAW: dict = {}


def _wrap(name, fn):
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            for item in fn(*a, **k):
                _record(name, item)
                yield item
        return gen

    @functools.wraps(fn)
    def wrapper(*a, **k):
        result = fn(*a, **k)
        _record(name, result)
        return result
    return wrapper


def pytest_configure(config):
    import importlib
    import pkgutil

    import ckptcount

    from hypothesis import settings

    settings.register_profile("dump", derandomize=True, database=None)
    settings.load_profile("dump")
    for info in pkgutil.walk_packages(ckptcount.__path__, "ckptcount."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # torch-only modules where torch is missing
            pass
    originals = {}
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("ckptcount"):
            for name in ENTRY_POINTS + RENDERERS:
                fn = getattr(mod, name, None)
                if callable(fn) and getattr(fn, "__module__", "").startswith("ckptcount"):
                    kind = f"{name}[diff]" if "diff" in fn.__module__ else name
                    originals.setdefault(id(fn), (kind, fn))
    wrapped = {key: _wrap(qual, fn) for key, (qual, fn) in originals.items()}
    for qual, fn in originals.values():
        if qual == "to_json":
            _RAW["to_json"] = fn
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("ckptcount"):
            for name in ENTRY_POINTS + RENDERERS:
                fn = getattr(mod, name, None)
                if id(fn) in wrapped:
                    setattr(mod, name, wrapped[id(fn)])


def pytest_runtest_setup(item):
    if not _basetemp:
        _basetemp.append(str(item.config._tmp_path_factory.getbasetemp()))
    _current["test"] = item.nodeid


def pytest_sessionfinish(session):
    """Batch audits finish in thread order: the lines are sorted, so the dump is a multiset per test."""
    path = os.environ.get("CKPTCOUNT_DUMP")
    if path and os.path.exists(path):
        lines = sorted(open(path).readlines())
        with open(path, "w") as f:
            f.writelines(lines)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    dump_cli(out)
    if "--suite" in sys.argv:
        return dump_suite(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
