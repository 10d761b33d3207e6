"""Benchmark two source trees of ckptcount against each other, in one run: start-up and the local gpt2-xl wall.

    git worktree add /tmp/before <commit>
    python scripts/bench_trees.py /tmp/before [AFTER, default: this tree] [--runs 31]

Each measurement is a fresh Python process with the tree first on PYTHONPATH (so an editable install elsewhere does
not interfere), run in that tree's folder; the two trees alternate run by run, so load on the machine falls on both
alike. Reported: the minimum (the cost itself: load only ever adds) and the median wall of each, and after/before of
both. What is timed:

  import       python -c "import ckptcount.cli"                    (start-up: what every command pays)
  gpt2-xl      python -m ckptcount fixtures/gpt2-xl                 (the table)
  gpt2-xl json python -m ckptcount fixtures/gpt2-xl --format json --tensors
  llama json   python -m ckptcount fixtures/llama-3.1-8b --format json (sharded, 291 tensors)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "import": ["-c", "import ckptcount.cli"],
    "gpt2-xl": ["-m", "ckptcount", "fixtures/gpt2-xl"],
    "gpt2-xl json": ["-m", "ckptcount", "fixtures/gpt2-xl", "--format", "json", "--tensors"],
    "llama json": ["-m", "ckptcount", "fixtures/llama-3.1-8b", "--format", "json"],
}


def once(tree: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path, nargs="?", default=ROOT)
    p.add_argument("--runs", type=int, default=31)
    a = p.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    print(f"before: {trees['before']}\nafter:  {trees['after']}\n{a.runs} runs each, alternating; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'':14s} {'min: before':>12s} {'after':>7s} {'ratio':>6s}   {'median: before':>15s} {'after':>7s} {'ratio':>6s}  (ms)")
    for case, args in CASES.items():
        for tree in trees.values():  # warm the page cache and the bytecode caches of both
            once(tree, args)
        walls: dict[str, list[float]] = {k: [] for k in trees}
        for i in range(a.runs):
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for name, tree in order:
                walls[name].append(once(tree, args))
        lo_b, lo_f = min(walls["before"]), min(walls["after"])
        b, f = statistics.median(walls["before"]), statistics.median(walls["after"])
        print(f"{case:14s} {lo_b * 1000:12.1f} {lo_f * 1000:7.1f} {lo_f / lo_b:6.3f}   {b * 1000:15.1f} {f * 1000:7.1f} {f / b:6.3f}")


if __name__ == "__main__":
    main()
