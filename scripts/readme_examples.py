"""Keep the README's examples true: every ```console block whose first line is `$ ckptcount ...` is re-run.

    python scripts/readme_examples.py          # rewrite README.md with fresh output
    python scripts/readme_examples.py --check  # exit 1 if any example's output has drifted (tests/test_readme.py)

Commands run in-process through click's CliRunner from the repository root, so they use the bundled fixtures only.
A block may hold one command; its output is what follows it.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n\$ (ckptcount [^\n]*)\n(.*?)```", re.S)


def run(command: str) -> str:
    from click.testing import CliRunner

    from ckptcount.cli import main

    argv = shlex.split(command)[1:]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(main, argv)
    finally:
        os.chdir(cwd)
    out = result.stdout + result.stderr
    return "\n".join(line.rstrip() for line in out.splitlines()) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"```console\n$ {m.group(1)}\n{run(m.group(1))}```", text)


def main() -> int:
    text = README.read_text()
    fresh = render(text)
    if "--check" in sys.argv:
        if fresh != text:
            print("README.md examples have drifted: run python scripts/readme_examples.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
