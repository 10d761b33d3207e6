"""Benchmark: counting gpt2-xl from its header vs. the usual ways, whole process, median wall time and peak RSS.

Compared, each as a fresh Python process on the same machine:
  ckptcount          `ckptcount <target> --format json` (the console script)
  (a) safe_open      `python -c` listing keys and shapes with safetensors' safe_open
  (b) hf_hub         huggingface_hub.parse_local_safetensors_file_metadata
  (c) from_pretrained the seed exercise: GPT2LMHeadModel.from_pretrained + sum(p.numel())

(a)-(c) need a complete file, so the script builds a full-size *sparse* replica of gpt2-xl (6.4 GB apparent, ~60 KB
on disk) from fixtures/gpt2-xl: the same header, the data section a hole that reads as zeros. ckptcount is timed on
both the header-only fixture and the replica. Peak RSS comes from wait4() on each child.

    python scripts/bench_local.py [--runs 7] [--slow-runs 3] [--skip-from-pretrained]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "gpt2-xl"


def sparse_replica(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    raw = (FIXTURE / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    with open(dest / "model.safetensors", "wb") as f:
        f.write(raw)
        f.truncate(8 + n + data)
    shutil.copy(FIXTURE / "config.json", dest / "config.json")
    return dest


def run_once(argv: list[str], env: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def measure(argv: list[str], runs: int, env: dict) -> dict:
    run_once(argv, env)  # warm the page cache and .pyc files
    samples = [run_once(argv, env) for _ in range(runs)]
    return {
        "wall_s": statistics.median(s[0] for s in samples),
        "peak_rss_mb": statistics.median(s[1] for s in samples) / 2**20,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--slow-runs", type=int, default=3)
    parser.add_argument("--skip-from-pretrained", action="store_true")
    args = parser.parse_args()
    py = sys.executable
    ckpt = str(Path(py).with_name("ckptcount"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryDirectory() as tmp:
        rep = sparse_replica(Path(tmp) / "gpt2-xl")
        st = str(rep / "model.safetensors")
        cases = {
            "ckptcount (header-only fixture)": ([ckpt, str(FIXTURE), "--format", "json"], args.runs),
            "ckptcount (full-size replica)": ([ckpt, str(rep), "--format", "json"], args.runs),
            "(a) safetensors safe_open": ([py, "-c", "from safetensors import safe_open\n"
                                           f"f = safe_open({st!r}, 'np')\n"
                                           "print(sum(1 for k in f.keys() if f.get_slice(k).get_shape() is not None))"], args.runs),
            "(b) huggingface_hub parse_local": ([py, "-c", "from huggingface_hub import parse_local_safetensors_file_metadata as p\n"
                                                 f"print(sum(p({st!r}).parameter_count.values()))"], args.runs),
        }
        if not args.skip_from_pretrained:
            cases["(c) GPT2LMHeadModel.from_pretrained"] = ([py, "-c", "from transformers import GPT2LMHeadModel\n"
                                                             f"m = GPT2LMHeadModel.from_pretrained({str(rep)!r})\n"
                                                             "print(sum(p.numel() for p in m.parameters()))"], args.slow_runs)
        results = {name: measure(argv, runs, env) for name, (argv, runs) in cases.items()}
    base = results["ckptcount (full-size replica)"]
    print(f"{'method':40} {'wall (median)':>14} {'peak RSS':>10} {'vs ckptcount':>22}")
    for name, r in results.items():
        ratio = f"{r['wall_s'] / base['wall_s']:.1f}x time, {r['peak_rss_mb'] / base['peak_rss_mb']:.1f}x mem"
        print(f"{name:40} {r['wall_s'] * 1000:11.0f} ms {r['peak_rss_mb']:7.1f} MB {ratio:>22}")


if __name__ == "__main__":
    main()
