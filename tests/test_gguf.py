"""GGUF: files written with the gguf package's writer, checked against gguf.GGUFReader; hostile headers byte by byte."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from ckptcount.formats import gguf as ours  # noqa: E402
from ckptcount.api import audit  # noqa: E402
from ckptcount.errors import CkptError, HeaderError, ReadError  # noqa: E402
from ckptcount.analysis.quant import GGUF_FILE_TYPES  # noqa: E402
from ckptcount.sources.files import LocalFile  # noqa: E402

D, V, FF = 256, 96, 512  # rows of 256 so every K-quant block fits


def _raw(qtype: T, rows: int, cols: int) -> np.ndarray:
    """Random bytes shaped like a quantized [rows, cols] tensor (the writer derives the logical shape from them)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return np.random.default_rng(0).integers(0, 255, size=(rows, cols // block * size), dtype=np.uint8)


def write_model(path, *, tied: bool, split_max_tensors: int = 0, tokens: int = 16, experts: int = 0, used: int = 0):
    """A 2-layer llama-like GGUF with several tensor types; returns the writer's output paths."""
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    w.add_context_length(2048)
    w.add_block_count(2)
    w.add_embedding_length(D)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_token_list([f"tok{i}" for i in range(tokens)])
    w.add_token_scores([0.0] * tokens)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(used)
    w.add_tensor("token_embd.weight", _raw(T.Q6_K, V, D), raw_dtype=T.Q6_K)
    w.add_tensor("output_norm.weight", np.ones(D, dtype=np.float32))
    if not tied:
        w.add_tensor("output.weight", _raw(T.Q8_0, V, D), raw_dtype=T.Q8_0)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", gguf.quants.quantize(np.ones((D, D), np.float32), T.Q8_0), raw_dtype=T.Q8_0)
        w.add_tensor(f"blk.{i}.attn_k.weight", _raw(T.Q4_K, D, D), raw_dtype=T.Q4_K)
        w.add_tensor(f"blk.{i}.attn_v.weight", np.zeros((D, D), np.float16))
        w.add_tensor(f"blk.{i}.attn_output.weight", _raw(T.IQ4_XS, D, D), raw_dtype=T.IQ4_XS)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, dtype=np.float32))
        if experts:
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", np.zeros((experts, D), np.float32))
            for part, (r, c) in (("gate", (FF, D)), ("up", (FF, D)), ("down", (D, FF))):
                raw = _raw(T.Q4_0, experts * r, c).reshape(experts, r, -1)
                w.add_tensor(f"blk.{i}.ffn_{part}_exps.weight", raw, raw_dtype=T.Q4_0)
        else:
            w.add_tensor(f"blk.{i}.ffn_gate.weight", _raw(T.Q5_K, FF, D), raw_dtype=T.Q5_K)
            w.add_tensor(f"blk.{i}.ffn_up.weight", gguf.quants.quantize(np.ones((FF, D), np.float32), T.BF16), raw_dtype=T.BF16)
            w.add_tensor(f"blk.{i}.ffn_down.weight", _raw(T.Q2_K, D, FF), raw_dtype=T.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return w.format_shard_names(w.path)


def oracle(paths) -> dict[str, object]:
    """name -> gguf.GGUFReader's tensor, over every file of the set."""
    out = {}
    for p in paths:
        for t in gguf.GGUFReader(p).tensors:
            out[t.name] = t
    return out


# ---------------------------------------------------------------- tables agree with the gguf package


def test_type_table_matches_gguf_package():
    theirs = {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in T}
    assert dict(ours.GGML_TYPES) == theirs


def test_file_type_names_match_gguf_package():
    for ft in gguf.LlamaFileType:
        if ft.name != "GUESSED":
            assert GGUF_FILE_TYPES[int(ft)] == ft.name


# ---------------------------------------------------------------- valid files against GGUFReader


@pytest.mark.parametrize("tied", [True, False])
def test_counts_match_gguf_reader(tmp_path, tied):
    (path,) = write_model(tmp_path / "m.gguf", tied=tied)
    theirs = oracle([path])
    report = audit(str(path))
    mine = {t.name: t for t in report.checkpoint.tensors}
    assert set(mine) == set(theirs)
    data_start = gguf.GGUFReader(path).data_offset
    for name, t in theirs.items():
        m = mine[name]
        assert m.numel == t.n_elements, name
        assert m.nbytes == t.n_bytes, name
        assert m.shape == tuple(int(x) for x in reversed(t.shape)), name
        assert m.dtype == t.tensor_type.name, name
        assert data_start + m.begin == t.data_offset, name
    total = sum(t.n_elements for t in theirs.values())
    assert report.counts.parameters == total
    assert report.counts.by_dtype["Q6_K"].bytes == theirs["token_embd.weight"].n_bytes
    q = report.quantization
    assert q["method"] == "gguf" and q["architecture"] == "llama" and q["context_length"] == 2048
    assert q["file_type"] == "MOSTLY_Q4_K_M"
    quantized = [t for t in theirs.values() if t.tensor_type.name not in ("F32", "F16", "BF16")]
    assert q["quantized"]["elements"] == sum(t.n_elements for t in quantized)
    assert q["bits_per_weight"] == round(8 * sum(t.n_bytes for t in quantized) / sum(t.n_elements for t in quantized), 4)
    assert q["by_type"]["Q4_K"]["bits_per_weight"] == 4.5  # 144 bytes per 256 weights
    if tied:
        (group,) = report.ties
        assert group.names == ("token_embd.weight", "output.weight") and group.stored == ("token_embd.weight",)
        assert "output.weight not stored" in group.evidence
        assert report.counts.untied_parameters == total + V * D
        assert report.counts.by_component["output_head"].elements == 0
    else:
        assert report.ties == ()
        assert report.counts.by_component["output_head"].elements == V * D


def test_split_set_is_merged(tmp_path):
    paths = write_model(tmp_path / "m.gguf", tied=False, split_max_tensors=6)
    assert len(paths) >= 3 and paths[0].name.endswith("-00001-of-%05d.gguf" % len(paths))
    theirs = oracle(paths)
    for target in (tmp_path, paths[0]):  # the directory, or the first shard as llama.cpp is given it
        report = audit(str(target))
        assert len(report.checkpoint.files) == len(paths)
        assert {t.name for t in report.checkpoint.tensors} == set(theirs)
        assert report.counts.parameters == sum(t.n_elements for t in theirs.values())
        assert report.checkpoint.findings == ()
        assert report.quantization["architecture"] == "llama"  # only the first shard holds it


def test_split_set_with_a_missing_shard(tmp_path):
    paths = write_model(tmp_path / "m.gguf", tied=False, split_max_tensors=6)
    paths[1].unlink()
    with pytest.raises(CkptError, match="no such file"):
        audit(str(paths[0]))
    report = audit(str(tmp_path))  # a directory: count what is there, and say what is missing
    kinds = {f.kind for f in report.checkpoint.findings}
    messages = " ".join(f.message for f in report.checkpoint.findings)
    assert kinds == {"gguf-split"} and "split.no" in messages and "split.tensors.count" in messages


class CountingSource:
    """A ByteSource over bytes in memory that records every read (as an HTTP range reader would issue them)."""

    def __init__(self, data: bytes, name: str = "remote.gguf", known_size: bool = True):
        self.data, self.name, self.known = data, name, known_size
        self.reads: list[tuple[int, int]] = []
        self.bytes_read = 0

    def size(self):
        return len(self.data) if self.known else None

    def read(self, offset, length):
        self.reads.append((offset, length))
        chunk = self.data[offset : offset + length]
        self.bytes_read += len(chunk)
        return chunk


@pytest.mark.parametrize("tokens", [16, 40_000])
def test_reads_grow_only_as_needed(tmp_path, tokens):
    (path,) = write_model(tmp_path / "m.gguf", tied=True, tokens=tokens)
    data = path.read_bytes()
    src = CountingSource(data)
    h = ours.parse(src, "remote.gguf")
    header = h.header_bytes
    assert {t.name for t in h.tensors} == set(oracle([path]))
    # never more than twice the header (doubling chunks) plus the first block; token scores are skipped unread
    assert src.bytes_read <= 2 * header + ours.FIRST_READ
    assert len(src.reads) <= 2 + max(0, (header // ours.FIRST_READ).bit_length())
    assert all(o + n <= len(data) for o, n in src.reads)
    if tokens > 1000:
        assert header > 4 * ours.FIRST_READ and src.bytes_read < len(data) // 2


def test_unknown_size_source(tmp_path):
    (path,) = write_model(tmp_path / "m.gguf", tied=True)
    h = ours.parse(CountingSource(path.read_bytes(), known_size=False), "remote.gguf")
    assert len(h.tensors) == len(oracle([path])) and h.header_only is False


def test_header_only_file_counts_like_the_full_file(tmp_path):
    (path,) = write_model(tmp_path / "m.gguf", tied=True)
    full = audit(str(path))
    cut = tmp_path / "h" / "m.gguf"
    cut.parent.mkdir()
    h = ours.parse(LocalFile(path), "m.gguf")
    cut.write_bytes(path.read_bytes()[: h.data_start])
    report = audit(str(cut))
    assert report.checkpoint.files[0].header_only
    assert report.counts.parameters == full.counts.parameters


def test_cli_json(tmp_path):
    from click.testing import CliRunner

    from ckptcount.cli import main

    (path,) = write_model(tmp_path / "m.gguf", tied=True)
    result = CliRunner().invoke(main, [str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    target = json.loads(result.stdout)["targets"][0]
    assert target["format"] == "gguf"
    assert target["parameters"] == sum(t.n_elements for t in oracle([path]).values())
    assert target["quantization"]["method"] == "gguf"
    assert "moe" not in target


# ---------------------------------------------------------------- hostile headers, byte by byte


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name: str | bytes, dims: list[int], ggml_type: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return s(name) + struct.pack("<I", n) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)


def gguf_file(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, n_tensors=None, n_kv=None, version=3, magic=b"GGUF"):
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % 32
    return body + b"\0" * pad + data


def parse_bytes(data: bytes, known_size: bool = True):
    return ours.parse(CountingSource(data, known_size=known_size), "evil.gguf")


def test_minimal_valid_file_parses():
    data = gguf_file([kv("general.architecture", 8, s("llama"))], [tinfo("w", [4, 2])], b"\0" * 32)
    h = parse_bytes(data)
    assert h.tensors[0].shape == (2, 4) and h.tensors[0].nbytes == 32 and h.kv["general.architecture"] == "llama"
    # and the gguf package agrees it is a GGUF file
    assert h.version == 3


HOSTILE = [
    # (attack, bytes, message fragment)
    ("wrong magic", gguf_file([], [], magic=b"GGML"), "not a GGUF file"),
    ("empty file", b"", "not a GGUF file"),
    ("version 1 (32-bit counts)", gguf_file([], [], version=1), "unsupported GGUF version 1"),
    ("big-endian file", gguf_file([], [], version=3 << 24), "big-endian"),
    ("2^60 tensors", gguf_file([], [], n_tensors=2**60), "over the 1000000 limit"),
    ("2^63 key/values", gguf_file([], [], n_kv=2**63), "over the 1000000 limit"),
    ("tensor count the file cannot hold", gguf_file([], [], n_tensors=900_000), "only"),
    ("key length 2^62", gguf_file([struct.pack("<Q", 2**62)], [], b"\0" * 64, n_kv=1), "over the"),
    ("string value length 2^40", gguf_file([kv("k", 8, struct.pack("<Q", 2**40))], []), "over the"),
    ("array length 2^40", gguf_file([kv("k", 9, struct.pack("<IQ", 4, 2**40))], []), "over the"),
    ("array longer than the file", gguf_file([kv("k", 9, struct.pack("<IQ", 8, 1_000_000))], []), "only"),
    ("array of arrays", gguf_file([kv("k", 9, struct.pack("<IQ", 9, 1))], []), "array of arrays"),
    ("array of unknown type", gguf_file([kv("k", 9, struct.pack("<IQ", 77, 1))], []), "unknown type 77"),
    ("unknown value type", gguf_file([kv("k", 13, b"")], []), "unknown value type 13"),
    ("duplicate key", gguf_file([kv("k", 4, b"\1\0\0\0"), kv("k", 4, b"\1\0\0\0")], []), "duplicate key"),
    ("alignment 3", gguf_file([kv("general.alignment", 4, struct.pack("<I", 3))], []), "power of two"),
    ("alignment 0", gguf_file([kv("general.alignment", 4, struct.pack("<I", 0))], []), "power of two"),
    ("key not UTF-8", gguf_file([s(b"\xff\xfe") + struct.pack("<I", 4) + b"\0" * 4], []), "not valid UTF-8"),
    ("tensor name of 1000 bytes", gguf_file([], [tinfo("x" * 1000, [4])], b"\0" * 32), "over the 256-byte limit"),
    ("tensor name not UTF-8", gguf_file([], [tinfo(b"\xc3\x28", [4])], b"\0" * 32), "not valid UTF-8"),
    ("5 dims", gguf_file([], [tinfo("w", [1, 1, 1, 1, 1])], b"\0" * 32), "5 dims"),
    ("2^32-1 dims", gguf_file([], [tinfo("w", [], n_dims=2**32 - 1)]), "dims"),
    ("dim over int64", gguf_file([], [tinfo("w", [2**63])]), "overflows int64"),
    ("element count over int64", gguf_file([], [tinfo("w", [2**32, 2**32])]), "overflows int64"),
    ("unknown ggml type", gguf_file([], [tinfo("w", [4], ggml_type=4)], b"\0" * 32), "unknown ggml type 4"),
    ("row not a multiple of the block", gguf_file([], [tinfo("w", [33, 2], ggml_type=8)], b"\0" * 96), "not a multiple of its block size 32"),
    ("duplicate tensor", gguf_file([], [tinfo("w", [4]), tinfo("w", [4], offset=32)], b"\0" * 64), "duplicate tensor"),
    ("offset leaves a hole", gguf_file([], [tinfo("w", [4], offset=32)], b"\0" * 64), "starts at offset 32"),
    ("offsets overlap", gguf_file([], [tinfo("a", [16]), tinfo("b", [4], offset=32)], b"\0" * 128), "previous tensor's data ends at 64"),
    ("data past the end of the file", gguf_file([], [tinfo("w", [1024])], b"\0" * 64), "tensors span 4096 data bytes"),
    ("file too short for its counts", gguf_file([], [tinfo("w", [4])])[:30], "only 6 bytes remain"),
    ("file cut inside a tensor name", gguf_file([], [tinfo("x" * 100, [4])])[:70], "the file ends at byte 70"),
]


@pytest.mark.parametrize("attack,data,fragment", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_header_is_rejected(attack, data, fragment):
    src = CountingSource(data)
    with pytest.raises(HeaderError, match=None) as e:
        ours.parse(src, "evil.gguf")
    assert fragment in str(e.value), str(e.value)
    assert str(e.value).startswith("evil.gguf: ") and "\n" not in str(e.value)
    assert src.bytes_read <= max(len(data), ours.FIRST_READ)  # nothing was read beyond the file, nothing huge allocated


@pytest.mark.parametrize("attack,data,fragment", [h for h in HOSTILE if "file" not in h[0]], ids=lambda x: x if isinstance(x, str) else "")
def test_hostile_header_without_a_known_size(attack, data, fragment):
    """Over HTTP the size may be unknown: the caps still hold before anything is allocated."""
    with pytest.raises((HeaderError, ReadError)):
        parse_bytes(data, known_size=False)


def test_every_truncation_fails_cleanly(tmp_path):
    (path,) = write_model(tmp_path / "m.gguf", tied=True)
    data = path.read_bytes()
    end = ours.parse(CountingSource(data), "m").header_bytes
    for cut in range(0, end, 7):
        with pytest.raises(CkptError):
            parse_bytes(data[:cut])


def test_split_names():
    assert ours.split_names("m-00002-of-00003.gguf") == ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
    assert ours.split_names("model-Q4_K_M.gguf") is None


def _embedding_pair(path, emb: np.ndarray, head, head_type=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(emb.shape[1])
    w.add_token_list([f"tok{i}" for i in range(emb.shape[0])])
    w.add_token_scores([0.0] * emb.shape[0])
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(emb.shape[1], dtype=np.float32))
    w.add_tensor("output.weight", head, raw_dtype=head_type) if head_type is not None else w.add_tensor("output.weight", head)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_verify_ties_reads_float_gguf_tensors(tmp_path, dtype):
    """token_embd against output, read at the data section's start plus each tensor's offset (row-major: the reader
    reverses ggml's dims), against numpy; a quantized head is reported by its type, not read."""
    from ckptcount.verify.run import verify_report
    from ckptcount.verify.spans import local_opener

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((V, D)).astype(dtype)
    head = (emb + 1e-2 * rng.standard_normal((V, D))).astype(dtype)
    _embedding_pair(tmp_path / "m.gguf", emb, head)
    opener = local_opener(str(tmp_path / "m.gguf"))
    c = verify_report(audit(str(tmp_path / "m.gguf")), device="cpu", backend="numpy", open_source=opener).verification.embedding_vs_head
    e, h = emb.astype(np.float64), head.astype(np.float64)
    assert c.skipped is None and c.orientation == "same"
    assert c.pearson_r == pytest.approx(float(np.corrcoef(e.ravel(), h.ravel())[0, 1]), abs=1e-9)
    assert c.max_abs_diff == pytest.approx(float(np.abs(e - h).max()), abs=1e-12)
    assert c.identical is False and c.bytes_read == 2 * emb.nbytes
    assert sum(f.bytes_read for f in opener.opened.values()) == 2 * emb.nbytes

    _embedding_pair(tmp_path / "q.gguf", emb, _raw(T.Q8_0, V, D), T.Q8_0)
    c = verify_report(audit(str(tmp_path / "q.gguf")), device="cpu", backend="numpy").verification.embedding_vs_head
    assert c.skipped == "output.weight is Q8_0: only F64, F32, F16, BF16 and F8 are decoded"
