"""One hostile file per validation rule, built byte by byte with struct.pack; each is rejected with its own message.

Plus the cases that must still parse: a minimal valid file, rank-0 scalars, zero-size tensors, space padding,
header-only files, sub-byte dtypes.
"""

from __future__ import annotations

import json
import struct

import pytest

from ckptcount.errors import HeaderError
from ckptcount.formats.safetensors import MAX_HEADER_BYTES, parse_header, read_header
from ckptcount.sources.files import LocalFile


def raw_file(header: bytes | str | dict, data: bytes = b"", n: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def check(tmp_path, content: bytes, name: str = "model.safetensors"):
    p = tmp_path / name
    p.write_bytes(content)
    return read_header(LocalFile(p, name))


def t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# ---- must parse ----

def test_minimal_valid_file(tmp_path):
    h = check(tmp_path, raw_file({"a": t()}, b"\0" * 8))
    assert [(x.name, x.shape, x.numel, x.nbytes) for x in h.tensors] == [("a", (2,), 2, 8)]
    assert not h.header_only


def test_empty_header_object(tmp_path):
    assert check(tmp_path, raw_file({})).tensors == ()


def test_scalar_and_zero_size_tensors(tmp_path):
    header = {"s": t("I64", (), (0, 8)), "z": t("F32", (0, 4), (8, 8)), "v": t("F16", (3,), (8, 14))}
    h = check(tmp_path, raw_file(header, b"\0" * 14))
    got = {x.name: x.numel for x in h.tensors}
    assert got == {"s": 1, "z": 0, "v": 3}


def test_space_padded_header_and_metadata(tmp_path):
    header = json.dumps({"__metadata__": {"format": "pt"}, "a": t()}) + " " * 5
    h = check(tmp_path, raw_file(header, b"\0" * 8))
    assert dict(h.metadata) == {"format": "pt"} and h.header_bytes == len(header)


def test_header_only_file(tmp_path):
    h = check(tmp_path, raw_file({"a": t()}))  # 8 + N bytes, no data
    assert h.header_only and h.data_bytes == 8


def test_sub_byte_dtypes(tmp_path):
    # F4: 4 bits -> 6 elements = 3 bytes; F6_E2M3: 6 bits -> 4 elements = 3 bytes
    header = {"a": t("F4", (6,), (0, 3)), "b": t("F6_E2M3", (4,), (3, 6)), "c": t("F8_E8M0", (2,), (6, 8))}
    assert [x.nbytes for x in check(tmp_path, raw_file(header, b"\0" * 8)).tensors] == [3, 3, 2]


def test_unaligned_header_length(tmp_path):
    """The gpt2 Hub file's header (14,283 bytes) is not padded to 8: alignment is never assumed."""
    header = json.dumps({"a": t("U8", (3,), (0, 3))})
    assert len(header) % 8 != 0
    assert check(tmp_path, raw_file(header, b"abc")).tensors[0].nbytes == 3


# ---- must fail, each with its own message ----

HOSTILE = [
    # (attack, file bytes, expected message fragment)
    ("shorter than the length prefix", b"\x01\x02\x03", "too short for the 8-byte header length"),
    ("header length 2^63", struct.pack("<Q", 2**63) + b"{}", "header length 9223372036854775808 exceeds the 100000000-byte cap"),
    ("100 MB + 1 header", struct.pack("<Q", MAX_HEADER_BYTES + 1), "header length 100000001 exceeds the 100000000-byte cap"),
    ("length past end of file", raw_file("{}", n=100), "header length 100 runs past the end of the file (10 bytes)"),
    ("invalid UTF-8", raw_file(b'{"\xff": 1}'), "not valid UTF-8 (byte 2 of 8)"),
    ("not JSON", raw_file("{nope"), "not valid JSON"),
    ("JSON but not an object", raw_file("[1, 2]"), "header is a JSON list, not an object"),
    ("deep nesting", raw_file("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    ("duplicate keys (json keeps the last)", raw_file('{"a": %s, "a": %s}' % (json.dumps(t()), json.dumps(t()))) + b"\0" * 8, "duplicate key 'a'"),
    ("metadata not string->string", raw_file({"__metadata__": {"k": 1}}), "__metadata__ must map strings to strings"),
    ("tensor not an object", raw_file({"a": [1]}), "tensor 'a' is a JSON list, not an object"),
    ("missing data_offsets", raw_file({"a": {"dtype": "F32", "shape": [1]}}), "tensor 'a' has no 'data_offsets'"),
    ("unknown dtype", raw_file({"a": t("F128")}) + b"\0" * 8, "tensor 'a' has unknown dtype 'F128'"),
    ("negative dim", raw_file({"a": t("F32", (-2,))}) + b"\0" * 8, "tensor 'a' has invalid shape [-2]"),
    ("boolean dim", raw_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}), "invalid shape [true]"),
    ("three offsets", raw_file({"a": t("F32", (2,), (0, 4, 8))}), "has invalid data_offsets [0, 4, 8]"),
    ("end before begin", raw_file({"a": t("F32", (0,), (8, 0))}), "end before they begin"),
    ("shape product overflows u64", raw_file({"a": t("F32", (2**32, 2**32, 2), (0, 8))}), "overflows 64 bits"),
    ("sub-byte size not whole bytes", raw_file({"a": t("F4", (3,), (0, 2))}) + b"\0\0", "is 12 bits of F4, not a whole number of bytes"),
    ("declared size vs offsets", raw_file({"x": t("F32", (1024,), (0, 4094))}) + b"\0" * 4094, "tensor 'x' declares 4096 bytes but its offsets span 4094"),
    ("hole at the start", raw_file({"a": t("F32", (2,), (4, 12))}) + b"\0" * 12, "tensor 'a' starts at byte 4 but the data section starts at 0: a 4-byte hole"),
    ("hole between tensors", raw_file({"a": t(), "b": t("F32", (1,), (12, 16))}) + b"\0" * 16, "tensor 'b' starts at byte 12 but 'a' ends at 8: a 4-byte hole"),
    ("overlap", raw_file({"a": t(), "b": t("F32", (2,), (4, 12))}) + b"\0" * 12, "tensor 'b' starts at byte 4 but 'a' ends at 8: 4 bytes of overlap"),
    ("data shorter than tensors", raw_file({"a": t()}) + b"\0" * 4, "tensors span 8 data bytes but the file holds 4 after the header"),
    ("trailing bytes after data", raw_file({"a": t()}) + b"\0" * 9, "tensors span 8 data bytes but the file holds 9 after the header"),
    ("control chars in a name", raw_file({"a\x1b[2J": t("F99")}), "tensor 'a\\x1b[2J' has unknown dtype"),
]


@pytest.mark.parametrize("attack,content,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_rejected_with_its_own_message(tmp_path, attack, content, message):
    with pytest.raises(HeaderError) as e:
        check(tmp_path, content, "evil.safetensors")
    text = str(e.value)
    assert text.startswith("evil.safetensors: ")
    assert message in text
    assert "\n" not in text and "\x1b" not in text


def test_messages_are_distinct():
    assert len({m for _, _, m in HOSTILE}) == len(HOSTILE)


def test_parse_header_without_file_size_skips_coverage():
    """The Hub reader may not know the size yet: everything but coverage is still checked."""
    buf = json.dumps({"a": t()}).encode()
    assert parse_header(buf, "remote", None).data_bytes == 8
    with pytest.raises(HeaderError, match="overlap"):
        parse_header(json.dumps({"a": t(), "b": t("F32", (2,), (4, 12))}).encode(), "remote", None)


def test_huge_header_length_reads_nothing_more(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 2**63))
    src = LocalFile(p)
    with pytest.raises(HeaderError):
        read_header(src)
    assert src.bytes_read == 8
