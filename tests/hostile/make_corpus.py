"""Write the hostile corpus: one small file (or folder) per attack, and manifest.json with each one's expected
one-line error and exit code. Every file is built here byte by byte with ``struct.pack``; the comment on each case
names the attack. tests/test_hostile_corpus.py runs the CLI on every case and checks that this script still writes
exactly the committed bytes, so the corpus and its generator cannot drift apart.

    python tests/hostile/make_corpus.py            # rewrite the corpus next to this file

Things git cannot hold are made by the test in its copy of the corpus (``setup``): a FIFO as a shard. Symlinks are
committed as symlinks.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def st(header: bytes | str, data: bytes = b"", n: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian N (the real length unless ``n`` lies), the header, the data."""
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


def tensor(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def st_obj(obj: dict, data_bytes: int) -> bytes:
    return st(json.dumps(obj, separators=(",", ":")), bytes(data_bytes))


def torch_zip(pkl: bytes, storages: dict[str, bytes], extra: dict[str, bytes] | None = None, stem: str = "archive") -> bytes:
    """A torch-layout zip (stored, as torch writes it): <stem>/data.pkl, <stem>/data/<key>, <stem>/version."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: the bytes must not depend on today
            z.writestr(info, data)

        add(f"{stem}/data.pkl", pkl)
        for key, data in storages.items():
            add(f"{stem}/data/{key}", data)
        add(f"{stem}/version", b"3\n")
        for name, data in (extra or {}).items():
            add(name, data)
    return buf.getvalue()


# {"w": F32 tensor [2, 3] on storage "0"}, protocol 2, as torch.save spells it.
TENSOR_W = (
    b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01"
    b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04"
    b"X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x06tq\x07QK\x00K\x02K\x03\x86K\x03K\x01\x86\x89"
    b"ccollections\nOrderedDict\n)Rtq\x08Rq\x09s."
)


def gguf_string_bomb() -> bytes:
    # GGUF v3, 0 tensors, 1 key/value whose key claims 2**63 bytes.
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"general.architecture"


def index(weight_map: dict[str, str]) -> bytes:
    return json.dumps({"metadata": {"total_size": 16}, "weight_map": weight_map}).encode()


BAD_UTF8 = b'{"w\x80":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'  # byte 3: a lone continuation byte
SMALL = st_obj({"w": tensor("F32", [4], 0, 16)}, 16)  # a valid 4-element file, the shard every index case names
SHARD = "model-00001-of-00001.safetensors"
INDEX = "model.safetensors.index.json"


def cases() -> list[dict]:
    """Each case: name, files {relative path: bytes | ("symlink", target)}, target, setup, args, exit, stderr."""
    big = 2**63
    out = [
        # header length 2**63: a reader that allocates N bytes before checking dies here.
        dict(name="header-len-2pow63", files={"header-len-2pow63.safetensors": st("{}", n=big)},
             stderr=f"header-len-2pow63.safetensors: header length {big} exceeds the 100000000-byte cap"),
        # one byte over the reference implementation's 100,000,000-byte header cap.
        dict(name="header-100MB-plus-1", files={"header-100MB-plus-1.safetensors": st("{}", n=100_000_001)},
             stderr="header-100MB-plus-1.safetensors: header length 100000001 exceeds the 100000000-byte cap"),
        # a header length that fits the cap but runs past the end of a tiny file.
        dict(name="header-past-eof", files={"header-past-eof.safetensors": st("{}", n=4096)},
             stderr="header-past-eof.safetensors: header length 4096 runs past the end of the file (10 bytes)"),
        # JSON nested 100,000 deep: recursive parsers overflow the C stack or hit RecursionError.
        dict(name="json-nesting-100k", files={"json-nesting-100k.safetensors": st('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")},
             stderr="json-nesting-100k.safetensors: header JSON is nested too deeply"),
        # an integer literal of 5,000 digits: Python's int() refuses more than 4,300 and json raises a bare ValueError.
        dict(name="integer-5000-digits", files={"integer-5000-digits.safetensors": st(
            '{"a":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,4]}}', bytes(4))},
             stderr="integer-5000-digits.safetensors: header is not valid JSON: an integer of more than 4300 digits"),
        # invalid UTF-8: a lone continuation byte inside a tensor name.
        dict(name="invalid-utf8", files={"invalid-utf8.safetensors": st(BAD_UTF8, bytes(4))},
             stderr=f"invalid-utf8.safetensors: header is not valid UTF-8 (byte 3 of {len(BAD_UTF8)})"),
        # duplicate keys: Python's json keeps the last one silently; the format forbids them.
        dict(name="duplicate-keys", files={"duplicate-keys.safetensors": st(
            '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8))},
             stderr="duplicate-keys.safetensors: header has duplicate key 'w'"),
        # overlapping offsets: two tensors share bytes 4-8, so a writer could alias them.
        dict(name="overlapping-offsets", files={"overlapping-offsets.safetensors": st_obj(
            {"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}, 12)},
             stderr="overlapping-offsets.safetensors: tensor 'b' starts at byte 4 but 'a' ends at 8: 4 bytes of overlap"),
        # a hole: 4 bytes between two tensors that no tensor owns (room to smuggle data).
        dict(name="holed-offsets", files={"holed-offsets.safetensors": st_obj(
            {"a": tensor("F32", [1], 0, 4), "b": tensor("F32", [1], 8, 12)}, 12)},
             stderr="holed-offsets.safetensors: tensor 'b' starts at byte 8 but 'a' ends at 4: a 4-byte hole"),
        # offsets past 64 bits: a u64 reader would wrap around.
        dict(name="overflowing-offsets", files={"overflowing-offsets.safetensors": st_obj(
            {"a": tensor("F32", [1], 2**64 - 2, 2**64 + 2)}, 0)},
             stderr="overflowing-offsets.safetensors: tensor 'a' has data_offsets beyond 64 bits"),
        # a dtype the format does not define.
        dict(name="unknown-dtype", files={"unknown-dtype.safetensors": st_obj({"a": tensor("F12", [1], 0, 4)}, 4)},
             stderr="unknown-dtype.safetensors: tensor 'a' has unknown dtype 'F12'"),
        # a negative dimension: numel would be negative (or huge after a cast).
        dict(name="negative-dims", files={"negative-dims.safetensors": st_obj({"a": tensor("F32", [-1, 4], 0, 16)}, 16)},
             stderr="negative-dims.safetensors: tensor 'a' has invalid shape [-1, 4]"),
        # a shape whose product overflows 64 bits and wraps to a small size in C.
        dict(name="shape-product-overflow", files={"shape-product-overflow.safetensors": st_obj(
            {"a": tensor("F32", [2**32, 2**32, 2], 0, 0)}, 0)},
             stderr="shape-product-overflow.safetensors: tensor 'a' shape [4294967296, 4294967296, 2] overflows 64 bits"),
        # a sharded index naming a shard outside the checkpoint directory.
        dict(name="index-path-traversal", files={f"index-path-traversal/{INDEX}": index({"w": "../outside.safetensors"})},
             stderr="index-path-traversal/model.safetensors.index.json: path '../outside.safetensors' leaves the checkpoint directory"),
        # an index naming an absolute path.
        dict(name="index-absolute-path", files={f"index-absolute-path/{INDEX}": index({"w": "/etc/passwd"})},
             stderr="index-absolute-path/model.safetensors.index.json: path '/etc/passwd' is not a plain relative path"),
        # an index nested 100,000 deep.
        dict(name="index-nesting-100k", files={f"index-nesting-100k/{INDEX}": b'{"weight_map":' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
             stderr="index-nesting-100k/model.safetensors.index.json: not valid JSON (RecursionError)"),
        # zip slip: an entry whose name climbs out of the archive (an extractor would write /tmp/evil).
        dict(name="zip-slip", files={"zip-slip.pt": torch_zip(TENSOR_W, {"0": bytes(24)}, {"archive/../../../../tmp/evil": b"x"})},
             stderr="zip-slip.pt: zip entry 'archive/../../../../tmp/evil' is not a plain relative path"),
        # pickle RCE: data.pkl calls os.system at load time. Reported, never executed; --strict turns it into exit 4.
        dict(name="pickle-rce", files={"pickle-rce.pt": torch_zip(
            b"\x80\x02}q\x00(X\x04\x00\x00\x00evilq\x01cos\nsystem\nq\x02X\x0e\x00\x00\x00touch /tmp/pwnq\x03\x85q\x04Rq\x05u.", {})},
             args=["--strict"], exit=4, stderr="",
             stdout_line="pickle-rce.pt: unsafe-pickle: pickle-rce.pt: pickle calls os.system, which can run code or touch the system: not executed (torch.load(weights_only=True) would refuse it)"),
        # a GGUF key whose length claims 2**63 bytes.
        dict(name="gguf-string-2pow63", files={"gguf-string-2pow63.gguf": gguf_string_bomb()},
             stderr="gguf-string-2pow63.gguf: key at byte 24 declares 9223372036854775808 bytes, over the 16777216-byte limit"),
        # a shard that is a symlink to a file outside the checkpoint directory.
        dict(name="symlink-escape", files={f"symlink-escape/{INDEX}": index({"w": SHARD}), f"symlink-escape/{SHARD}": ("symlink", "../outside.safetensors")},
             stderr="symlink-escape/model.safetensors.index.json: path 'model-00001-of-00001.safetensors' resolves outside the checkpoint directory"),
        # a shard that is a symlink loop (the shard -> b -> the shard): resolving it never ends.
        dict(name="symlink-loop", files={f"symlink-loop/{INDEX}": index({"w": SHARD}), f"symlink-loop/{SHARD}": ("symlink", "b"), "symlink-loop/b": ("symlink", SHARD)},
             stderr="symlink-loop/model.safetensors.index.json: path 'model-00001-of-00001.safetensors' is a symlink loop"),
        # a shard that is a symlink to /dev/zero: an endless file of zeros (header length 0, then reads forever).
        dict(name="dev-zero-shard", files={f"dev-zero-shard/{INDEX}": index({"w": SHARD}), f"dev-zero-shard/{SHARD}": ("symlink", "/dev/zero")},
             stderr="dev-zero-shard/model.safetensors.index.json: path 'model-00001-of-00001.safetensors' resolves outside the checkpoint directory"),
        # /dev/zero named directly as the checkpoint file.
        dict(name="dev-zero-file", files={"dev-zero.safetensors": ("symlink", "/dev/zero")}, target="dev-zero.safetensors",
             stderr="dev-zero.safetensors: not a regular file"),
        # a FIFO as a shard: opening it would block forever (made by the test: git cannot hold a FIFO).
        dict(name="fifo-shard", files={f"fifo-shard/{INDEX}": index({"w": SHARD})}, setup={"fifo": f"fifo-shard/{SHARD}"},
             stderr=f"fifo-shard/{SHARD}: not a regular file"),
    ]
    out.append(dict(name="outside", files={"outside.safetensors": SMALL}, exit=0, stderr="", control=True))  # control: it parses
    for c in out:
        c.setdefault("target", next(iter(c["files"])).split("/")[0])
        c.setdefault("args", [])
        c.setdefault("exit", 1)
        if c["stderr"]:
            c["stderr"] = f"Error: {c['stderr']}"
    return out


def write(dest: Path = HERE) -> list[dict]:
    manifest = []
    for c in cases():
        for rel, content in c["files"].items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            if isinstance(content, tuple):
                os.symlink(content[1], path)
            else:
                path.write_bytes(content)
        entry = {k: c[k] for k in ("name", "target", "args", "exit", "stderr")}
        entry["files"] = sorted(c["files"])
        for k in ("setup", "stdout_line", "control"):
            if k in c:
                entry[k] = c[k]
        manifest.append(entry)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    print(f"{len(write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))} cases written")
