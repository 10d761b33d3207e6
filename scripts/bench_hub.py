"""Benchmark Hub header audits against the local stand-in Hub (tests/hubserver.py) with added latency per request.

Side by side, each as a whole process (start-up imports included), on a fresh HF_HOME each run:

- ``ckptcount <repo> --format json``, cold, then again (cached: the same commit), then with HF_HUB_OFFLINE=1;
- huggingface_hub ``get_safetensors_metadata(repo)``;
- hf-mem (PyPI ``hf-mem``, when ``--hf-mem`` names its executable): hf-mem ignores HF_ENDPOINT and always calls
  https://huggingface.co, so its process gets a ``sitecustomize`` that rewrites that origin to the stand-in's in an
  httpx2 (or, with huggingface_hub 1.x, httpx) request hook (no proxy, nothing else changed).

Repos: ``openai-community/gpt2`` (the header-only fixture, one file) and ``bench/sharded-10`` (the gpt2-xl header split
into 10 shards with an index; shards are served as header + zeros of their true size). LFS files redirect to a second
host (a CDN), as on the Hub; a redirect hop counts as a request and a round trip. ``--mode hub`` (the default) runs the
stand-in as the real Hub behaves (gzip-compressed, chunked JSON and text answers, the CDN on another host name);
``--mode plain`` as the earlier measurements did.

Reported per run: requests (all hosts), sequential round trips (longest chain of requests each starting after the
previous ended), body bytes sent by the server, whole-process wall (median of --runs).

    python scripts/bench_hub.py --latency 0.05 --runs 5 --hf-mem /path/to/venv/bin/hf-mem [--tls] [--mode plain]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer, Virtual, load_dir, make_cert  # noqa: E402

SITECUSTOMIZE = """
import os

try:  # huggingface_hub 2.x (and the hf-mem built on it) uses httpx2; 1.x uses httpx
    import httpx2
except ImportError:
    import httpx as httpx2

_TARGET = os.environ["BENCH_ENDPOINT"]
_init = httpx2.AsyncClient.__init__


def __init__(self, *args, **kwargs):
    hooks = dict(kwargs.pop("event_hooks", None) or {})

    async def rewrite(request):
        if request.url.host == "huggingface.co":
            request.url = httpx2.URL(str(request.url).replace("https://huggingface.co", _TARGET, 1))

    hooks["request"] = list(hooks.get("request", [])) + [rewrite]
    _init(self, *args, event_hooks=hooks, **kwargs)


httpx2.AsyncClient.__init__ = __init__
"""


def sharded_from(fixture: Path, shards: int) -> dict:
    """Split a header-only fixture's tensors into ``shards`` files (header + zeros) with an index."""
    raw = (fixture / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    per = -(-len(names) // shards)
    files: dict = {"config.json": (fixture / "config.json").read_bytes()}
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        obj, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in part:
            b, e = header[name]["data_offsets"]
            obj[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"], "data_offsets": [offset, offset + e - b]}
            offset += e - b
        body = json.dumps(obj).encode()
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        files[shard] = Virtual(struct.pack("<Q", len(body)) + body, 8 + len(body) + offset)
        weight_map.update({name: shard for name in part})
        total += offset
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}).encode()
    return files


def run(server: HubServer, argv: list[str], env: dict) -> dict:
    server.reset_log()
    server.connections = {"hub": 0, "cdn": 0}
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    log = server.settled()
    conns = sum(server.connections.values())
    return {"requests": len(log), "round_trips": server.round_trips(), "bytes": sum(r.sent for r in log), "wall": wall, "stdout": p.stdout, "connections": conns}


def precompile() -> None:
    """Write ckptcount's bytecode (__pycache__, git-ignored) before timing, as ``pip install`` does for an installed
    package: with PYTHONDONTWRITEBYTECODE=1 in the environment (as on the shared machine) every run would otherwise
    recompile ckptcount's sources (~60-90 ms of each start), while huggingface_hub's bytecode comes with its wheel."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ckptcount")], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request (default 0.05)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ckptcount", default=None, help="the ckptcount executable to time (default: the one next to this python); for before/after runs")
    ap.add_argument("--hf-mem", default=None, help="path to an hf-mem executable (its own venv)")
    ap.add_argument("--mode", choices=["plain", "hub"], default="hub", help="the stand-in's mode (tests/hubserver.py): hub (default) compresses and chunks JSON/text answers and puts the CDN on another host name, as the real Hub does; plain does neither")
    ap.add_argument("--tls", action="store_true", help="production-like link: HTTPS (a self-signed certificate, trusted through SSL_CERT_FILE) and --latency also added to every new connection")
    ap.add_argument("--telemetry", action="store_true", help="leave HF_HUB_DISABLE_TELEMETRY unset (adds huggingface_hub's daily /api/agent-harnesses fetch to every fresh HF_HOME)")
    args = ap.parse_args()

    precompile()
    tls = make_cert(Path(tempfile.mkdtemp())) if args.tls else None
    server = HubServer(mode=args.mode, tls=tls, connect_latency=args.latency if args.tls else 0.0)
    server.add("openai-community/gpt2", load_dir(ROOT / "fixtures" / "gpt2"))
    server.add("bench/sharded-10", sharded_from(ROOT / "fixtures" / "gpt2-xl", 10))
    server.latency = args.latency
    py = sys.executable
    ckpt = args.ckptcount or str(Path(py).parent / "ckptcount")
    site = tempfile.mkdtemp()
    Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)

    rows = []
    try:
        for repo in ("openai-community/gpt2", "bench/sharded-10"):
            tools = {
                "ckptcount (cold)": [ckpt, repo, "--format", "json"],
                "ckptcount (cached, same commit)": None,
                "ckptcount (HF_HUB_OFFLINE=1)": None,
                "huggingface_hub get_safetensors_metadata": [py, "-c", f"from huggingface_hub import get_safetensors_metadata as g; g({repo!r})"],
            }
            if args.hf_mem:
                tools["hf-mem"] = [args.hf_mem, "--model-id", repo]
            results: dict[str, list] = {k: [] for k in tools}
            for _ in range(args.runs):
                home = tempfile.mkdtemp()
                base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CKPTCOUNT_", "TRANSFORMERS_"))}
                base.update(HF_ENDPOINT=server.url, HF_HOME=home, BENCH_ENDPOINT=server.url, NO_COLOR="1")
                if tls:
                    base["SSL_CERT_FILE"] = str(tls[0])
                if not args.telemetry:
                    base["HF_HUB_DISABLE_TELEMETRY"] = "1"
                for name, argv in tools.items():
                    env = dict(base)  # the three ckptcount runs share HF_HOME: cold, then cached, then offline
                    if name.startswith("ckptcount ("):
                        argv = tools["ckptcount (cold)"]
                        if name.endswith("OFFLINE=1)"):
                            env["HF_HUB_OFFLINE"] = "1"
                    else:
                        env["HF_HOME"] = tempfile.mkdtemp()
                        if name == "hf-mem":
                            env["PYTHONPATH"] = site
                    results[name].append(run(server, argv, env))
            cold = json.loads(results["ckptcount (cold)"][0]["stdout"])["targets"][0]
            for name, rs in results.items():
                rows.append(
                    (repo, name, rs[0]["requests"], rs[0]["round_trips"], rs[0]["connections"], rs[0]["bytes"], statistics.median(r["wall"] for r in rs), cold["parameters"])
                )
    finally:
        server.close()
    hub_wall = {repo: wall for repo, name, _r, _t, _c, _b, wall, _p in rows if name.startswith("huggingface_hub")}
    mem_wall = {repo: wall for repo, name, _r, _t, _c, _b, wall, _p in rows if name == "hf-mem"}
    link = f"HTTPS, {args.latency * 1000:.0f} ms per new connection too" if args.tls else "HTTP"
    print(f"stand-in mode {args.mode}, {link}, latency {args.latency * 1000:.0f} ms per request, median of {args.runs} runs, telemetry {'on' if args.telemetry else 'off'}\n")
    print("| repo | tool | requests | sequential round trips | connections | bytes sent by the server | wall (s) | wall vs huggingface_hub | wall vs hf-mem |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for repo, name, req, rt, conns, nbytes, wall, _ in rows:
        vs_mem = f"{wall / mem_wall[repo]:.2f}x" if repo in mem_wall else "-"
        print(f"| {repo} | {name} | {req} | {rt} | {conns} | {nbytes:,} | {wall:.3f} | {wall / hub_wall[repo]:.2f}x | {vs_mem} |")


if __name__ == "__main__":
    main()
