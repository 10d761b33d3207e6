"""Property tests: whatever bytes arrive, the safetensors reader either parses them or raises HeaderError.

Seeds are real headers (the GPT-2 fixture, a hand-built file with every dtype); hypothesis mutates them. Memory stays
bounded for any declared length because the reader never allocates from a declared size before checking it against
the cap and the file size.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ckptcount.errors import CkptError
from ckptcount.records import DTYPE_BITS
from ckptcount.formats.safetensors import parse_header, read_header

from conftest import FIXTURES, MemSource

SEED = (FIXTURES / "gpt2" / "model.safetensors").read_bytes()[8:]


def _parse(buf: bytes, size: int | None) -> None:
    try:
        h = parse_header(buf, "fuzz.safetensors", size)
    except CkptError as e:
        assert type(e).__name__ == "HeaderError" and "\n" not in str(e)
        return
    # whatever parsed obeys the rules
    pos = 0
    for t in h.tensors:
        assert t.begin == pos and t.end - t.begin == t.nbytes
        pos = t.end


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512), st.one_of(st.none(), st.integers(0, 2**40)))
def test_random_bytes(buf, size):
    _parse(buf, size)


@FUZZ
@given(st.data())
def test_mutated_real_header(data):
    buf = bytearray(SEED[:2000])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    _parse(bytes(buf), data.draw(st.one_of(st.none(), st.integers(0, 2**34))))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
tensor_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_BITS)) | st.text(max_size=5),
        "shape": st.lists(st.integers(-2, 2**33), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3) | json_values,
    }
)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), tensor_entries | json_values, max_size=6), st.integers(0, 2**41))
def test_structured_headers(header, size):
    _parse(json.dumps(header).encode(), size)


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_any_declared_length_reads_at_most_the_file(n, rest):
    src = MemSource("fuzz.safetensors", struct.pack("<Q", n) + rest)
    try:
        read_header(src)
    except CkptError:
        pass


def _one_by_one(obj: dict) -> list:
    """The reference: every entry through the rule-by-rule validator."""
    from ckptcount.formats.safetensors import _tensor

    return [_tensor(name, info, "f.safetensors", "f.safetensors") for name, info in obj.items()]


def _outcome(fn, obj):
    try:
        return [(t.name, t.dtype, t.shape, t.begin, t.end, t.numel) for t in fn(obj)]
    except CkptError as e:
        return str(e)


near_valid = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_BITS)) | st.sampled_from(["F12", "", "f32"]) | json_values,
        "shape": st.lists(st.sampled_from([0, 1, 2, 3, 2**33, 2**40, 2**64, -1, True, 1.5]) | st.integers(-1, 2**40), max_size=18)
        | json_values,
        "data_offsets": st.lists(st.integers(-1, 2**66), min_size=1, max_size=3) | json_values,
    },
    optional={"extra": json_values},
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=4), near_valid, max_size=4), st.data())
@example({"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}, None)  # overflow before a 0
def test_fast_path_accepts_and_rejects_exactly_what_the_rules_do(header, data):
    from ckptcount.formats.safetensors import _tensors

    # make some entries exactly consistent, so the accepting branch is exercised too
    for info in header.values():
        if data is not None and data.draw(st.booleans()) and isinstance(info["dtype"], str) and info["dtype"] in DTYPE_BITS and type(info["shape"]) is list:
            if all(type(d) is int and d >= 0 for d in info["shape"]) and type(info["data_offsets"]) is list:
                n = 1
                for d in info["shape"]:
                    n *= d
                begin = data.draw(st.integers(0, 2**20))
                info["data_offsets"] = [begin, begin + n * DTYPE_BITS[info["dtype"]] // 8]
    obj = json.loads(json.dumps(header))
    assert _outcome(lambda o: _tensors(o, "f.safetensors", "f.safetensors")[0], obj) == _outcome(_one_by_one, obj)


well_formed = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_BITS)),
        "shape": st.lists(st.integers(1, 300) | st.sampled_from([2**33, 2**40]), max_size=4),
    }
)


plain_meta = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\:'), max_size=4)  # as written


def _fast_outcome(buf: bytes):
    """What parse_header's msgspec path returns for ``buf``, in _outcome's form; None when it declines."""
    from ckptcount.formats.safetensors import _fast

    got = _fast(buf, "f.safetensors")
    if got is None:
        return None
    records, end, metadata = got
    assert all(type(t).__name__ == "TensorRecord" for t in records)
    assert end == (records[-1].end if records else 0)
    return _outcome(lambda o: records, None), metadata


def _reference(buf: bytes):
    """The rules' answer for ``buf``: json decode, then every entry one by one (a CkptError's message if any)."""
    from ckptcount.formats.safetensors import _decode

    try:
        obj = _decode(buf, "f.safetensors")
    except CkptError as e:
        return str(e), None
    metadata = obj.pop("__metadata__", {})
    return _outcome(_one_by_one, obj), metadata


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.text(max_size=4), well_formed), min_size=0, max_size=5, unique_by=lambda e: e[0]),
    st.none()
    | st.dictionaries(plain_meta, plain_meta, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4) | json_values, max_size=3),
    st.data(),
)
def test_fast_path_accepts_only_what_the_rules_accept(entries, metadata, data):
    """safetensors_header._fast (msgspec, then whole columns) may decline any header, but whatever it accepts the
    rules accept with the same records, data end and metadata. Entries are laid out contiguously, as safetensors
    writes them; then, in most examples, one field of one entry is replaced by a near-valid value (or an extra key
    added), and the text is written compact or spaced, ASCII-escaped or not, sometimes with a key repeated, so both
    the accepting branch and each of its refusals are exercised."""
    header, pos = {}, 0
    where = data.draw(st.sampled_from(["first", "first", "first", "last"]))  # safetensors writes it first
    if metadata is not None and where == "first":
        header["__metadata__"] = metadata
    for name, info in entries:
        n = 1
        for d in info["shape"]:
            n *= d
        nbytes = n * DTYPE_BITS[info["dtype"]] // 8
        header.setdefault(name, {**info, "data_offsets": [pos, pos + nbytes]})
        pos += nbytes
    if metadata is not None and where == "last":
        header["__metadata__"] = metadata
    tensors = [k for k in header if k != "__metadata__"]
    if tensors and data.draw(st.booleans()):
        victim = header[data.draw(st.sampled_from(tensors))]
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        victim[field] = data.draw(json_values) if field == "extra" else data.draw(near_valid)[field]
    compact = data.draw(st.sampled_from([True, True, False]))  # safetensors writes compact JSON
    text = json.dumps(header, ensure_ascii=data.draw(st.booleans()), separators=(",", ":") if compact else None)
    if data.draw(st.sampled_from([True, False, False])):  # repeat the first member of some object: the colon count must catch it
        at = data.draw(st.sampled_from([i for i, ch in enumerate(text) if ch == "{"]))
        close = text.index("}", at)
        first = text[at + 1 : close].split(",")[0]
        if ":" in first:
            text = text[: at + 1] + first + "," + text[at + 1 :]
    if data.draw(st.booleans()):
        text += " " * data.draw(st.integers(1, 7))  # safetensors pads the header to 8 bytes with spaces
    buf = text.encode()
    got = _fast_outcome(buf)
    if got is not None:
        assert got == _reference(buf)


def test_fast_path_takes_what_safetensors_writes():
    from conftest import safetensors_head

    head, pos = safetensors_head({"a.weight": ("BF16", [3, 4]), "a.bias": ("F32", [4]), "s": ("I64", []), "h": ("F16", [2, 8])})
    got = _fast_outcome(head[8:])
    assert got is not None and got == _reference(head[8:]) and len(got[0]) == 4
    from ckptcount.formats.safetensors import _fast

    assert _fast(head[8:], "m.safetensors")[1] == pos
    raw = (FIXTURES / "gpt2" / "model.safetensors").read_bytes()  # written by the safetensors package itself
    real = raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]]
    got = _fast_outcome(real)
    assert got is not None and got == _reference(real) and len(got[0]) == 160 and got[1] == {"format": "pt"}
    assert _fast_outcome(b"{}") == ([], {}) and _fast_outcome(b'{"__metadata__":{"format":"pt"}}') == ([], {"format": "pt"})
    header = json.loads(head[8:])
    for field, value in (("shape", [2, 0]), ("data_offsets", [25, 41]), ("dtype", "F4"), ("dtype", "F12"), ("shape", [4.0]), ("extra", 1)):
        broken = json.loads(head[8:])  # a zero dim, a hole, a size that does not match, an unknown dtype, a float dim, an extra key: declined
        broken["a.bias"][field] = value
        assert _fast_outcome(json.dumps(broken).encode()) is None, (field, value)
    for text in (
        json.dumps({"é": header["a.bias"]}, ensure_ascii=True),  # an escape: declined (json decodes escapes)
        json.dumps({"x:y": header["a.bias"]}),  # a colon in a name: the colon count cannot prove no key repeats
        '{"a":' + json.dumps(header["a.bias"]).replace('"dtype"', '"dtype": "F32", "dtype"', 1) + "}",  # a repeated key
        '{"a":' + json.dumps(header["a.bias"]) + ',"a":' + json.dumps(header["a.bias"]) + "}",
        '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",  # nested too deeply for msgspec: declined, not a crash
        json.dumps({"__metadata__": None}),
        '{"__metadata__":{"a":"b"},}',  # a trailing comma after the metadata: not JSON
        '{"__metadata__":{"a":"b"}} x',
        '{"__metadata__":{"a":{"b":"c"}},"t":' + json.dumps(header["a.bias"]) + "}",  # a nested object
        '{"t":' + json.dumps(header["a.bias"]) + ',"__metadata__":' + json.dumps(header["a.bias"]) + "}",  # entry-shaped
        '{"__metadata__":{"a":"b"},"__metadata__":{"a":"c"}}',
    ):
        assert _fast_outcome(text.encode()) is None, text[:60]
    for text, meta in (
        ('{"__metadata__":{"a":"}"}}   ', {"a": "}"}),  # a "}" inside a value: the first cut fails, the rules decide
        ('{"__metadata__":{}}', {}),
        ('{"__metadata__":{"format":"pt"}}\t ', {"format": "pt"}),
    ):
        assert _fast_outcome(text.encode()) in (None, ([], meta)) and _reference(text.encode()) == ([], meta), text


plain_text = st.text(alphabet="ab:. ", max_size=6)  # no braces or quotes: every '{' of the dump is an object
plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | plain_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_text, inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.dictionaries(plain_text, plain_values, max_size=6), st.data())
def test_a_duplicate_key_anywhere_is_found(header, data):
    """The fast decode proves "no duplicates" by counting colons; a duplicate at any depth must still be reported."""
    text = json.dumps(header)
    objects = [i for i, ch in enumerate(text) if ch == "{"]
    i = data.draw(st.sampled_from(objects))
    key = data.draw(plain_text)
    dup = f"{json.dumps(key)}: 1, {json.dumps(key)}: 2" + (", " if text[i + 1] != "}" else "")
    buf = (text[: i + 1] + dup + text[i + 1 :]).encode()
    try:
        parse_header(buf, "dup.safetensors", None)
    except CkptError as e:
        assert "duplicate key" in str(e), str(e)
        return
    raise AssertionError("a header with a duplicate key was accepted")


def test_colons_in_names_take_the_exact_path_and_still_parse():
    header = {"__metadata__": {"note": "a:b"}, "x:y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    h = parse_header(json.dumps(header).encode(), "c.safetensors", None)
    assert [t.name for t in h.tensors] == ["x:y"] and h.metadata["note"] == "a:b"


def test_integer_literal_too_long_is_a_header_error():
    buf = b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}'
    try:
        parse_header(buf, "long.safetensors", None)
    except CkptError as e:
        assert str(e).startswith("long.safetensors: header is not valid JSON: an integer of more than")
    else:
        raise AssertionError("accepted")


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=5), st.sampled_from(["F32", "BF16", "I64"]), st.lists(st.integers(0, 5), max_size=3)),
                min_size=1, max_size=8, unique_by=lambda x: x[0]), st.randoms(use_true_random=False))
def test_header_order_does_not_matter(entries, rnd):
    """In-order headers skip the sort (safetensors_header._tensors); any other order gives the same records."""
    from conftest import safetensors_head

    head, pos = safetensors_head({name: (dtype, shape) for name, dtype, shape in entries})
    in_order = parse_header(head[8:], "o.safetensors", None)
    items = list(json.loads(head[8:]).items())
    rnd.shuffle(items)
    shuffled = parse_header(json.dumps(dict(items)).encode(), "o.safetensors", None)
    key = lambda t: (t.begin, t.end, t.name)  # zero-size tensors at one offset may come in either order
    assert sorted(shuffled.tensors, key=key) == sorted(in_order.tensors, key=key) and shuffled.data_bytes == in_order.data_bytes == pos
    assert [(t.begin, t.end) for t in shuffled.tensors] == [(t.begin, t.end) for t in in_order.tensors]
