"""Property tests: whatever bytes arrive, the safetensors reader either parses them or raises HeaderError.

Seeds are real headers (the GPT-2 fixture, a hand-built file with every dtype); hypothesis mutates them. Memory stays
bounded for any declared length because the reader never allocates from a declared size before checking it against
the cap and the file size.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptcount.errors import CkptError
from ckptcount.records import DTYPE_BITS
from ckptcount.safetensors_header import parse_header, read_header

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
