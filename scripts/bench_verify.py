"""Benchmark --verify-ties on a gpt2-xl-sized embedding and head (50257 x 1600 F32 each, 321.6 MB apiece).

Writes one safetensors file (embedding + a near-copy head, LLaMA names, untied config) in a temp folder, then measures,
each in a fresh child process so peak RSS is the verifier's own:

* local: numpy on cpu, torch on cpu, torch on cuda (when a GPU is present);
* over the test Hub server (tests/hubserver.py, real HTTP on 127.0.0.1, LFS redirected to a "CDN" origin): numpy on
  cpu, and torch on cuda when present;
* `cat` of the same file to /dev/null (page cache warm), the throughput reference.

For each: wall seconds, bytes read (must be the two spans: 643,289,600), MB/s, wall against `cat`'s (target <= 2x),
peak RSS above the interpreter (after imports, the header audit and, for cuda, the CUDA context, whose time and host
memory are reported apart) against the block budget (target <= 1.2x). Each
run is repeated (--repeat, fresh processes) and the median wall is reported, with the worst RSS; the load average is
printed before and after, since the numbers mean little on a busy machine. Usage:

    python scripts/bench_verify.py [--rows 50257] [--cols 1600] [--block-mib 64] [--workers 1,2] [--repeat 3]
                                   [--skip-remote] [--modes numpy-cpu,torch-cpu,torch-cuda] [--warm-kernels] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh interpreter: audit, note peak RSS, verify, note peak RSS again."""
    if args.backend == "torch":
        import torch  # noqa: F401  (imported before the baseline so its RSS is the interpreter's)
    import numpy  # noqa: F401

    from ckptcount import audit
    from ckptcount.verify.run import resolve, verify_report

    report = audit(args.target)
    engine = resolve(args.device, args.backend)
    setup = {}
    if engine.cuda:  # the CUDA context is a fixed cost of any GPU work, not the verifier's: set it up before the clock
        torch = engine.torch
        before, t0 = _rss("VmRSS"), time.perf_counter()
        torch.zeros(1, device=engine.device)
        torch.cuda.synchronize(engine.device)
        setup = {"cuda_init_s": time.perf_counter() - t0, "cuda_init_rss": _rss("VmRSS") - before}
        if args.warm_kernels:  # load the kernels the verifier uses (lazily loaded code: host RSS) before the baseline
            before = _rss("VmRSS")
            raw = engine.host_buffer(1 << 16)
            engine.pair(raw, "F32", raw, "F32", engine.work(1 << 14))
            engine.release()
            setup["kernels_rss"] = _rss("VmRSS") - before
    base = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
        f.write("5")
    workers = None if args.workers in (None, "auto") else int(args.workers)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    out = verify_report(report, engine=engine, block_bytes=args.block_mib * 2**20, workers=workers)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = _rss("VmHWM")
    c = out.verification.embedding_vs_head
    print(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "bytes_read": c.bytes_read, "pearson_r": c.pearson_r, "max_abs_diff": c.max_abs_diff,
        "identical": c.identical, "device": c.device, "backend": c.backend, "rss_base": base, "rss_peak": peak,
        "findings": [f.kind for f in out.checkpoint.findings], **setup,
    }))


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def make(folder: Path, rows: int, cols: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, cols), dtype=np.float32)
    head = emb + np.float32(1e-3) * rng.standard_normal((rows, cols), dtype=np.float32)
    save_file({"model.embed_tokens.weight": emb, "lm_head.weight": head}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False}))
    return folder


def run_child(target: str, backend: str, device: str, block_mib: int, workers: str, env: dict | None = None,
              warm_kernels: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--target", target, "--backend", backend, "--device", device,
           "--block-mib", str(block_mib), "--workers", workers] + (["--warm-kernels"] if warm_kernels else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"child failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def median_of(repeat: int, one) -> dict:
    """Run ``one()`` ``repeat`` times: the median wall, the worst peak RSS, every wall kept."""
    runs = [one() for _ in range(repeat)]
    out = dict(runs[0])
    out["walls"] = [r["wall_s"] for r in runs]
    out["wall_s"] = statistics.median(out["walls"])
    for key in ("cpu_s", "cuda_init_s", "cuda_init_rss", "kernels_rss"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    if "rss_peak" in out:
        worst = max(runs, key=lambda r: r["rss_peak"] - r["rss_base"])
        out["rss_peak"], out["rss_base"] = worst["rss_peak"], worst["rss_base"]
        out["bytes_read"] = max(r["bytes_read"] for r in runs) if len({r["bytes_read"] for r in runs}) > 1 else out["bytes_read"]
    return out


def cat_once(path: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return {"wall_s": time.perf_counter() - t0, "bytes_read": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50257)
    ap.add_argument("--cols", type=int, default=1600)
    ap.add_argument("--block-mib", type=int, default=64)
    ap.add_argument("--workers", default="1", help="comma-separated thread counts for the local runs (or auto)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-remote", action="store_true")
    ap.add_argument("--modes", default="numpy-cpu,torch-cpu,torch-cuda", help="the local runs, among the default's")
    ap.add_argument("--warm-kernels", action="store_true",
                    help="cuda: run the verifier's kernels once on 64 KiB before the RSS baseline (their code is loaded lazily)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.child:
        return child(args)

    try:
        import torch
        cuda = torch.cuda.is_available()
        have_torch = True
    except ImportError:
        cuda, have_torch = False, False
    spans = 2 * args.rows * args.cols * 4
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make(Path(tmp) / "xl", args.rows, args.cols)
        path = folder / "model.safetensors"
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        rows.append({"run": "cat (whole file, warm cache)", **median_of(args.repeat, lambda: cat_once(path))})
        modes = [("numpy", "cpu")] + ([("torch", "cpu")] if have_torch else []) + ([("torch", "cuda")] if cuda else [])
        modes = [m for m in modes if "-".join(m) in args.modes.split(",")]
        for backend, device in modes:
            for w in args.workers.split(","):
                one = lambda: run_child(str(folder), backend, device, args.block_mib, w, warm_kernels=args.warm_kernels)  # noqa: E731
                rows.append({"run": f"local {backend} {device} w={w}", **median_of(args.repeat, one)})
        if not args.skip_remote:
            sys.path.insert(0, str(ROOT / "tests"))
            from hubserver import HubServer, load_dir

            server = HubServer()
            try:
                server.add("bench/xl", load_dir(folder))
                env = dict(os.environ, HF_ENDPOINT=server.url, HF_HOME=str(Path(tmp) / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
                env.pop("HF_TOKEN", None)
                for backend, device in [("numpy", "cpu")] + ([("torch", "cuda")] if cuda else []):
                    one = lambda: run_child("bench/xl", backend, device, args.block_mib, "auto", env, args.warm_kernels)  # noqa: E731
                    rows.append({"run": f"test server {backend} {device}", **median_of(args.repeat, one)})
            finally:
                server.close()
    load_after = os.getloadavg()
    block = args.block_mib * 2**20
    cat_mb_s = rows[0]["bytes_read"] / rows[0]["wall_s"] / 1e6
    for r in rows:
        r["mb_per_s"] = r["bytes_read"] / r["wall_s"] / 1e6
        r["x_cat"] = cat_mb_s / r["mb_per_s"]
        if "rss_peak" in r:
            r["rss_over_interpreter_mib"] = (r["rss_peak"] - r["rss_base"]) / 2**20
            r["rss_over_block"] = (r["rss_peak"] - r["rss_base"]) / block
            r["bytes_read_is_spans"] = r["bytes_read"] == spans
    load = f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs"
    if args.json:
        print(json.dumps({"load": load, "runs": rows}, indent=2))
        return
    print(f"{args.rows} x {args.cols} F32 embedding + head: spans {spans:,} bytes; block budget {args.block_mib} MiB; "
          f"median of {args.repeat}; {load}")
    print(f"{'run':28} {'wall s':>7} {'cpu s':>6} {'MB/s':>7} {'x cat':>6} {'bytes read':>13} {'=spans':>6} {'RSS>interp MiB':>14} {'xblock':>6}  r")
    for r in rows:
        extra = ""
        if "rss_peak" in r:
            extra = f" {str(r['bytes_read_is_spans']):>6} {r['rss_over_interpreter_mib']:14.1f} {r['rss_over_block']:6.2f}  {r['pearson_r']:.9f}"
        cpu = f"{r['cpu_s']:6.2f}" if "cpu_s" in r else " " * 6
        print(f"{r['run']:28} {r['wall_s']:7.2f} {cpu} {r['mb_per_s']:7.0f} {r['x_cat']:6.1f} {r['bytes_read']:13,}{extra}")
    for r in rows:
        if "cuda_init_s" in r:
            print(f"{r['run']}: CUDA context set up before the clock and the RSS baseline: "
                  f"{r['cuda_init_s']:.2f} s, {r['cuda_init_rss'] / 2**20:.0f} MiB of host RSS (median)"
                  + (f"; then the verifier's kernels loaded: {r['kernels_rss'] / 2**20:.0f} MiB" if "kernels_rss" in r else ""))
    print("walls: " + "; ".join(f"{r['run']}: " + ", ".join(f"{w:.2f}" for w in r["walls"]) for r in rows))


if __name__ == "__main__":
    main()
