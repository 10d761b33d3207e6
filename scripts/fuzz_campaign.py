"""Fuzz campaign: mutate real checkpoint headers and feed them to every reader; only ckptcount's own error may escape.

Readers (``--reader``, default all):

  safetensors  a .safetensors file through formats.read_file, then assemble + analyse + JSON (the whole count path)
  index        model.safetensors.index.json in a directory with real shards, through load_local + analyse
  torch-zip    a torch.save zip (pytorch_model.bin) through formats.read_file + analyse
  data-pkl     data.pkl alone: the inert pickle machine, the walker, storage checks and storage ties
  torch-legacy a pre-1.6 torch.save stream (_use_new_zipfile_serialization=False)
  gguf         a GGUF file written by the gguf package's writer

Seeds are real files: the GPT-2 fixture header and files written by safetensors, torch.save, transformers
(save_pretrained, sharded) and gguf.GGUFWriter. They are built once in a child process (torch is never imported by the
campaign itself, so the address-space limit below measures ckptcount alone) and kept in ``--work``.

Each input is a seed mutated by 1-16 byte-level operations (bit flips, interesting integers of 1/2/4/8 bytes, inserts,
deletes, chunk copies, truncation, tokens from a per-format dictionary, splices of two seeds) or, for JSON formats, by
a structure-aware operation (replace a value with a hostile one: 2**64, -1, deep nesting, unknown dtypes...; delete,
rename or duplicate a key), after which the safetensors length prefix is fixed half of the time so the mutation reaches
the validator. The random generator is seeded, so a run is reproducible (``--seed``).

A crash is any exception other than CkptError, an input taking longer than ``--time-limit`` seconds, or MemoryError
under the ``--memory-mb`` address-space limit. Each distinct crash (type + innermost ckptcount frame) is saved to
``--work/crashes/`` with its traceback. The summary (inputs run, accepted, rejected, crashes, slowest input, peak
RSS) is printed as a table and written to ``--work/summary.json``.

    python scripts/fuzz_campaign.py --inputs 100000            # every reader, 100,000 inputs each
    python scripts/fuzz_campaign.py --reader gguf --inputs 2000 --seed 7
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
READERS = ("safetensors", "index", "torch-zip", "data-pkl", "torch-legacy", "gguf")


# ----------------------------------------------------------------------------------------------------------- seeds
def make_seeds(out: Path) -> None:
    """Write real seed files into ``out`` (run in a child process: imports torch, transformers, safetensors, gguf)."""
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for sub in READERS:
        (out / sub).mkdir(exist_ok=True)
    # safetensors: the GPT-2 header (older writer, unpadded) and a file with every torch dtype, written by safetensors.
    gpt2 = (FIXTURES / "gpt2" / "model.safetensors").read_bytes()
    (out / "safetensors" / "gpt2.safetensors").write_bytes(gpt2)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float64]
    tensors = {f"layers.{i}.w{i}": torch.zeros((2, i + 1), dtype=dt) for i, dt in enumerate(dtypes)}
    tensors["scalar"] = torch.zeros((), dtype=torch.float32)
    tensors["empty"] = torch.zeros((0, 4), dtype=torch.float32)
    save_file(tensors, str(out / "safetensors" / "dtypes.safetensors"), metadata={"format": "pt"})

    # a tiny GPT-2 saved sharded by transformers: the index and its shards; also its state dict for the torch seeds.
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    shard_dir = out / "index"
    model.save_pretrained(shard_dir, max_shard_size="20KB")
    for p in shard_dir.iterdir():
        if p.suffix == ".safetensors":
            raw = p.read_bytes()
            (n,) = struct.unpack("<Q", raw[:8])
            p.write_bytes(raw[: 8 + n])  # header-only shards: the fuzzed index is what matters

    state = model.state_dict()  # tied: lm_head.weight and transformer.wte.weight share one storage
    torch.save(state, out / "torch-zip" / "pytorch_model.bin")
    torch.save({"model": {"w": torch.zeros(3, 4), "b": torch.zeros(4)}, "step": 7, "view": torch.zeros(8)[2:6]}, out / "torch-zip" / "training.pt")
    torch.save(state, out / "torch-legacy" / "legacy.bin", _use_new_zipfile_serialization=False)
    # a whole module (torch.save(model)): NEWOBJ + BUILD of nn.Module classes, a tie, a non-persistent buffer
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, bias=False))
    module[1].weight = module[0].weight
    module[0].register_buffer("scratch", torch.zeros(2), persistent=False)
    torch.save(module, out / "torch-zip" / "module.pt")
    torch.save(module, out / "torch-legacy" / "module-legacy.bin", _use_new_zipfile_serialization=False)
    import zipfile

    for seed in sorted((out / "torch-zip").iterdir()):
        with zipfile.ZipFile(seed) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            (out / "data-pkl" / (seed.stem + ".pkl")).write_bytes(z.read(pkl))

    import gguf

    def raw(qtype, rows, cols):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return np.zeros((rows, cols // block * size), dtype=np.uint8)

    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(out / "gguf" / "model.gguf"), "llama")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_token_scores([0.0] * 8)
    w.add_tensor("token_embd.weight", raw(T.Q4_K, 8, 256), raw_dtype=T.Q4_K)
    w.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", raw(T.Q8_0, 256, 256), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((64, 256), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"seeds written to {out}")


def load_seeds(work: Path) -> dict[str, list[tuple[str, bytes]]]:
    seeds = work / "seeds"
    if not (seeds / "gguf" / "model.gguf").exists():
        subprocess.run([sys.executable, __file__, "--make-seeds", str(seeds)], check=True, stdout=subprocess.DEVNULL)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for reader in READERS:
        files = sorted(p for p in (seeds / reader).iterdir() if p.is_file())
        if reader == "index":
            files = [p for p in files if p.name.endswith(".index.json")]
        out[reader] = [(p.name, p.read_bytes()) for p in files]
    return out


# ------------------------------------------------------------------------------------------------------- mutation
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**63, 2**64 - 1, 100_000_000, 100_000_001, 4096, 65536]
TOKENS = {
    "json": [b'"', b"{", b"}", b"[", b"]", b",", b":", b"-1", b"18446744073709551616", b"1e999", b"null", b"true", b'"F32"', b'"BF16"',
             b'"__metadata__"', b'"data_offsets"', b'"shape"', b'"dtype"', b"\\u0000", b"\xff", b"\xc3(", b"../", b"/etc/passwd", b"[" * 64],
    "pickle": [b"c", b"\x93", b"R", b"b", b"(", b"t", b"}", b"s", b"u", b"e", b"q\x00", b"h\x00", b"j\x00\x00\x00\x00", b"\x94", b"Q", b".",
               b"\x8c\x02os\x8c\x06system\x93", b"cos\nsystem\n", b"cbuiltins\neval\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
               b"ctorch\nFloatStorage\n", b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f", b"J\xff\xff\xff\x7f", b"K\xff", b"M\xff\xff"],
    "zip": [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"\xff\xff\xff\xff", b"../", b"/data.pkl", b"data/0"],
    "gguf": [b"GGUF", b"\x03\x00\x00\x00", b"\xff" * 8, b"\x00" * 8, b"\x08\x00\x00\x00", b"\x09\x00\x00\x00", b"general.alignment", b"split.count"],
}
TOKEN_KIND = {"safetensors": "json", "index": "json", "torch-zip": "zip", "data-pkl": "pickle", "torch-legacy": "pickle", "gguf": "gguf"}
HOSTILE_JSON = [-1, 0, 2**63, 2**64, 2**64 - 1, 10**30, 1.5, 1e308, "", "F32", "BF16", "F4", "F6_E2M3", "X9", None, True, [], {}, [0], [0, 0],
                [-1, 4], [2**32, 2**32, 2**32], [0, 2**64], "../outside.safetensors", "/etc/passwd", "sub/../../x", "a\x00b", "\u202e"]


def _int_bytes(rng: random.Random) -> bytes:
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(INTERESTING) % (1 << (8 * width))
    if rng.random() < 0.3:
        value = (value + rng.choice((-1, 1))) % (1 << (8 * width))
    return value.to_bytes(width, "little")


def mutate_bytes(rng: random.Random, data: bytes, tokens: list[bytes], others: list[bytes], start: int = 0) -> bytes:
    """1-16 byte-level edits at or after ``start`` (so a format's fixed prefix can be kept)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8, 16))):
        n = len(buf)
        pos = rng.randrange(start, n) if n > start else start
        op = rng.randrange(10)
        if op == 0 and n > start:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n > start:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            b = _int_bytes(rng)
            buf[pos : pos + len(b)] = b
        elif op == 3 and n > start:
            del buf[pos : pos + rng.choice((1, 2, 4, 8, 64, 1024))]
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8))))
        elif op == 5 and n > start:
            a = rng.randrange(start, n)
            chunk = bytes(buf[a : a + rng.choice((1, 4, 16, 256))])
            buf[pos:pos] = chunk
        elif op == 6:
            buf[pos:pos] = rng.choice(tokens)
        elif op == 7:
            t = rng.choice(tokens)
            buf[pos : pos + len(t)] = t
        elif op == 8 and n > start:
            del buf[rng.randrange(start, n) :]
        elif op == 9 and others:
            other = rng.choice(others)
            if other:
                a = rng.randrange(len(other))
                buf[pos:] = other[a : a + rng.randrange(1, 4096)]
    return bytes(buf)


def hostile_json(rng: random.Random) -> object:
    return copy.deepcopy(rng.choice(HOSTILE_JSON))  # a fresh copy: later edits must not change the table


def mutate_json(rng: random.Random, obj: object) -> object:
    """One structure-aware edit of a JSON document (in place where possible); returns the new root."""
    containers = []
    todo = [obj]
    while todo and len(containers) < 5000:
        x = todo.pop()
        if isinstance(x, (dict, list)) and x:
            containers.append(x)
            todo.extend(x.values() if isinstance(x, dict) else x)
    if not containers:
        return hostile_json(rng)
    c = rng.choice(containers)
    key = rng.choice(list(c)) if isinstance(c, dict) else rng.randrange(len(c))
    op = rng.randrange(6)
    if op <= 2:
        c[key] = hostile_json(rng)
    elif op == 3 and isinstance(c, dict):
        c[key + rng.choice(("", "x", ".weight", "\u0000"))] = c.pop(key)
    elif op == 3:
        del c[key]
    elif op == 4:
        value = c[key]
        for _ in range(rng.choice((2, 100, 400))):
            value = [value]
        c[key] = value
    else:
        if isinstance(c, dict):
            c.pop(key)
        else:
            c.append(c[key])
    return obj


def dumps(rng: random.Random, obj: object) -> bytes:
    """Serialize a mutated document; sometimes nest one value 100,000 deep, or replace a number by one of 5,000 digits
    (past Python's 4,300-digit int() limit), both beyond json.dumps, so spliced as text."""
    try:
        text = json.dumps(obj).encode()
    except (RecursionError, ValueError):
        text = b"{}"
    if rng.random() < 0.02:
        digits = [i for i in range(len(text)) if 48 <= text[i] <= 57 and (i == 0 or not 48 <= text[i - 1] <= 57)]
        if digits:
            at = rng.choice(digits)
            text = text[:at] + b"9" * 5000 + text[at:]
    if rng.random() < 0.03:
        depth = rng.choice((1000, 100_000))
        at = text.find(b":") + 1
        if at > 0:
            end = at + len(text[at:]) - len(text[at:].lstrip(b" "))
            text = text[:end] + b"[" * depth + b"0" + b"]" * depth + b"," + text[end:].split(b",", 1)[-1] if b"," in text[end:] else text
    return text


def mutate(rng: random.Random, reader: str, seeds: list[bytes]) -> bytes:
    seed = rng.choice(seeds)
    tokens = TOKENS[TOKEN_KIND[reader]]
    if reader == "safetensors":
        (n,) = struct.unpack("<Q", seed[:8])
        header, rest = seed[8 : 8 + n], seed[8 + n :]
        if rng.random() < 0.4:
            obj = json.loads(header)
            for _ in range(rng.choice((1, 1, 2, 3))):
                obj = mutate_json(rng, obj)
            header = dumps(rng, obj)
            if rng.random() < 0.2:  # a duplicate key: invisible to json.loads, forbidden by the format
                header = header.replace(b"{", b'{"dup": 1, "dup": 2, ', 1)
        else:
            header = mutate_bytes(rng, header, tokens, [s[8:] for s in seeds])
        if rng.random() < 0.3:
            rest = mutate_bytes(rng, rest, tokens, []) if rest else rest
        prefix = struct.pack("<Q", len(header)) if rng.random() < 0.7 else _int_bytes(rng).ljust(8, b"\0")[:8]
        return prefix + header + rest
    if reader == "index":
        if rng.random() < 0.6:
            obj = json.loads(seed)
            for _ in range(rng.choice((1, 1, 2, 3))):
                obj = mutate_json(rng, obj)
            return dumps(rng, obj)
        return mutate_bytes(rng, seed, tokens, seeds)
    if reader == "gguf" and rng.random() < 0.9:
        return mutate_bytes(rng, seed, tokens, seeds, start=4)  # keep the magic most of the time
    return mutate_bytes(rng, seed, tokens, seeds)


# -------------------------------------------------------------------------------------------------------- targets
class Bytes:
    """An in-memory ByteSource that records the largest read it was asked for."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.largest = data, name, 0

    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.largest = max(self.largest, length)
        return self.data[offset : offset + length]


def _count(name: str, reads: dict) -> None:
    """The count path after a reader accepted the input: assemble, analyse, render as JSON."""
    from ckptcount.api import analyse
    from ckptcount.targets.local import assemble
    from ckptcount.report.render import to_json

    ck = assemble(name, reads, config=None, config_file=None)
    to_json([analyse(ck)], tensors=True, layers=True)


def run_file(data: bytes, name: str) -> None:
    from ckptcount.formats.dispatch import read_file

    read = read_file(Bytes(data, name), name, f"fuzz/{name}")
    _count(name, {name: read})


def run_data_pkl(data: bytes) -> None:
    from ckptcount.formats.pytorch.unpickler import unpickle
    from ckptcount.formats.pytorch.walker import check_storages, storage_ties, unsafe_findings, walk

    result, _ = unpickle(data, "fuzz/data.pkl")
    walked = walk(result.root, "data.pkl")
    check_storages(walked, None, "fuzz/data.pkl", "data.pkl")
    storage_ties(walked.tensors, "data.pkl")
    unsafe_findings(result, "data.pkl")


class IndexDir:
    """A directory holding the real shards; each input replaces model.safetensors.index.json, then load_local runs."""

    def __init__(self, seeds: Path):
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
        self.tmp = tempfile.TemporaryDirectory(prefix="ckptcount-fuzz-", dir=base)
        self.dir = Path(self.tmp.name) / "ckpt"
        self.dir.mkdir()
        for p in seeds.iterdir():
            if p.name.endswith(".safetensors") or p.name == "config.json":
                (self.dir / p.name).write_bytes(p.read_bytes())
        (Path(self.tmp.name) / "outside.safetensors").write_bytes((seeds / sorted(q.name for q in seeds.iterdir() if q.suffix == ".safetensors")[0]).read_bytes())

    def run(self, data: bytes) -> None:
        from ckptcount.api import analyse
        from ckptcount.targets.local import load_local

        (self.dir / "model.safetensors.index.json").write_bytes(data)
        analyse(load_local(str(self.dir)))


def target(reader: str, work: Path):
    if reader == "safetensors":
        return lambda d: run_file(d, "model.safetensors")
    if reader == "torch-zip":
        return lambda d: run_file(d, "pytorch_model.bin")
    if reader == "torch-legacy":
        return lambda d: run_file(d, "pytorch_model.bin")
    if reader == "gguf":
        return lambda d: run_file(d, "model.gguf")
    if reader == "data-pkl":
        return run_data_pkl
    if reader == "index":
        return IndexDir(work / "seeds" / "index").run
    raise ValueError(reader)


# ---------------------------------------------------------------------------------------------------------- driver
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def crash_key(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ckptcount/" in f.filename.replace("\\", "/")]
    f = (ours or frames or [None])[-1]
    where = f"{Path(f.filename).name}:{f.lineno}" if f else "?"
    return f"{type(exc).__name__} at {where}"


def campaign(reader: str, seeds: list[bytes], inputs: int, rng: random.Random, work: Path, time_limit: float) -> dict:
    from ckptcount.errors import CkptError

    run = target(reader, work)
    crashes: dict[str, dict] = {}
    accepted = rejected = 0
    slowest = (0.0, None)
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    for i in range(inputs):
        data = seeds[i % len(seeds)] if i < len(seeds) else mutate(rng, reader, seeds)
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        try:
            run(data)
            accepted += 1
        except CkptError as e:
            rejected += 1
            if "\n" in str(e):
                _save(crashes, work, reader, data, "multi-line CkptError", f"{type(e).__name__}: {e!r}")
        except Hang:
            _save(crashes, work, reader, data, f"Hang over {time_limit} s", "")
        except (Exception, MemoryError, RecursionError) as e:  # noqa: BLE001  (anything else is a crash)
            _save(crashes, work, reader, data, crash_key(e), traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        spent = time.perf_counter() - started
        if spent > slowest[0]:
            slowest = (spent, len(data))
    return {
        "reader": reader,
        "inputs": inputs,
        "accepted": accepted,
        "rejected": rejected,
        "crashes": {k: v["count"] for k, v in crashes.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "slowest_input_ms": round(slowest[0] * 1000, 1),
        "slowest_input_bytes": slowest[1],
    }


def _save(crashes: dict, work: Path, reader: str, data: bytes, key: str, detail: str) -> None:
    entry = crashes.setdefault(key, {"count": 0})
    entry["count"] += 1
    if entry["count"] == 1:
        out = work / "crashes" / reader
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{len(list(out.glob('*.bin'))):03d}"
        (out / f"{stem}.bin").write_bytes(data)
        (out / f"{stem}.txt").write_text(f"{key}\n\n{detail}")
        print(f"  crash [{reader}] {key} -> {out / stem}.bin", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", choices=READERS, action="append", help="a reader to fuzz (repeatable; default all)")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per reader (the seeds themselves included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ckptcount-fuzz")
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit for the campaign process")
    parser.add_argument("--msgspec", action="store_true", help="decode every header and index by the msgspec paths (ckptcount.support.fastjson.THRESHOLD = 0; by default a process uses json for its first MiB)")
    parser.add_argument("--make-seeds", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_seeds:
        make_seeds(args.make_seeds)
        return
    sys.path.insert(0, str(ROOT))
    if args.msgspec:
        from ckptcount.support import fastjson

        fastjson.THRESHOLD = 0
    args.work.mkdir(parents=True, exist_ok=True)
    all_seeds = load_seeds(args.work)
    limit = args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rows = []
    for reader in args.reader or READERS:
        rng = random.Random(f"{args.seed}:{reader}")
        seeds = [data for _, data in all_seeds[reader]]
        print(f"{reader}: {args.inputs} inputs from {len(seeds)} seeds ({', '.join(n for n, _ in all_seeds[reader])})", file=sys.stderr)
        rows.append(campaign(reader, seeds, args.inputs, rng, args.work, args.time_limit))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"seed": args.seed, "msgspec": args.msgspec, "memory_limit_mb": args.memory_mb, "peak_rss_mb": round(peak, 1), "readers": rows}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'reader':13} {'inputs':>8} {'accepted':>9} {'rejected':>9} {'crashes':>8} {'seconds':>8} {'slowest':>9}")
    for r in rows:
        print(f"{r['reader']:13} {r['inputs']:>8} {r['accepted']:>9} {r['rejected']:>9} {sum(r['crashes'].values()):>8} {r['seconds']:>8} {r['slowest_input_ms']:>7} ms")
    print(f"peak RSS {peak:.1f} MB (address space limited to {args.memory_mb} MB)")
    for r in rows:
        for k, v in r["crashes"].items():
            print(f"crash: {r['reader']}: {k} (x{v})")
    sys.exit(1 if any(r["crashes"] for r in rows) else 0)


if __name__ == "__main__":
    main()
