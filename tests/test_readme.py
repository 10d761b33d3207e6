"""The README's ckptcount examples are real output: re-run them and compare."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_examples_are_current():
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "scripts" / "readme_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "README.md").read_text()
    assert mod.BLOCK.search(text), "README has no checked example"
    assert mod.render(text) == text, "README examples drifted: run python scripts/readme_examples.py"
