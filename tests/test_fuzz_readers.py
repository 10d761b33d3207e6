"""Property tests for every reader: sharded index, torch zip, data.pkl, legacy torch stream, GGUF (and safetensors
through the whole count path). Whatever bytes arrive, only ckptcount's own error type escapes, its message is one
line, and memory stays bounded for any declared length.

Inputs are real seeds (files written by transformers, torch.save, safetensors and gguf.GGUFWriter; see
scripts/fuzz_campaign.py, whose mutator and targets these tests share) mutated under hypothesis's control, so a failure
shrinks to a small reproducible case. The long campaign (100,000 inputs per reader) is the script; here each property
runs a couple of hundred examples. Crashes the campaign found are pinned as regression tests at the end.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptcount.cli import main
from ckptcount.errors import CkptError

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_campaign", ROOT / "scripts" / "fuzz_campaign.py")
fc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fc)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict:
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    folder = tmp_path_factory.mktemp("fuzz") / "seeds"
    fc.make_seeds(folder)
    out = {r: [p.read_bytes() for p in sorted((folder / r).iterdir()) if p.is_file() and (r != "index" or p.name.endswith(".index.json"))] for r in fc.READERS}
    out["_folder"] = folder
    return out


@pytest.fixture(scope="module")
def index_dir(seeds):
    d = fc.IndexDir(seeds["_folder"] / "index")
    yield d
    d.tmp.cleanup()


def only_ckpt_errors(run, data: bytes) -> str | None:
    """Run one input; a CkptError must be one line. Returns its message (None when the input was accepted)."""
    try:
        run(data)
    except CkptError as e:
        assert "\n" not in str(e) and "\r" not in str(e), repr(str(e))
        return str(e)
    return None


def test_seeds_are_accepted_unmutated(seeds, index_dir):
    """The scaffold: every seed parses, so a rejection below is the mutation's doing."""
    for reader in fc.READERS:
        run = index_dir.run if reader == "index" else fc.target(reader, seeds["_folder"].parent)
        for data in seeds[reader]:
            assert only_ckpt_errors(run, data) is None, reader


@pytest.mark.parametrize("reader", [r for r in fc.READERS if r != "index"])
@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_seeds_raise_only_ckpt_errors(seeds, reader, rnd):
    data = fc.mutate(rnd, reader, seeds[reader])
    only_ckpt_errors(fc.target(reader, seeds["_folder"].parent), data)


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_index_raises_only_ckpt_errors(seeds, index_dir, rnd):
    only_ckpt_errors(index_dir.run, fc.mutate(rnd, "index", seeds["index"]))


names = st.text(max_size=40) | st.sampled_from(["../x.safetensors", "/etc/passwd", "a\\b", "", ".", "sub/../x", "x\x00y", "model-00001-of-00002.safetensors"])
json_value = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@FUZZ
@given(st.dictionaries(st.text(max_size=30), names | json_value, max_size=8), json_value | st.dictionaries(st.sampled_from(["total_size", "total_parameters"]), json_value))
def test_structured_index_raises_only_ckpt_errors(index_dir, weight_map, metadata):
    doc = json.dumps({"metadata": metadata, "weight_map": weight_map}).encode()
    only_ckpt_errors(index_dir.run, doc)


# -------------------------------------------------------------- bounded memory for any declared length, every reader
LENGTH_FIELDS = {
    # where each seed keeps a length or count that a naive reader would allocate from
    "gguf": [8, 16, 24],  # tensor count, key/value count, first key length
    "torch-zip": [-22 + 12, -22 + 16, -22 + 10],  # EOCD: central directory size, offset, entry count
    "data-pkl": [3, 5],  # inside the first opcodes' arguments
    "torch-legacy": [3, 12],
}


@pytest.mark.parametrize("reader", sorted(LENGTH_FIELDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from([2**63, 2**64 - 1, 2**32 - 1, 2**31, 10**9]) | st.integers(0, 2**64 - 1), which=st.integers(0, 7), width=st.sampled_from([4, 8]))
def test_declared_lengths_never_allocate(seeds, reader, value, which, width):
    data = bytearray(seeds[reader][0])
    fields = LENGTH_FIELDS[reader]
    pos = fields[which % len(fields)] % len(data)
    data[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    run = fc.target(reader, seeds["_folder"].parent)
    tracemalloc.start()
    try:
        only_ckpt_errors(run, bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(data) + 8_000_000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list(fc.TOKENS["pickle"])) | st.binary(max_size=6), min_size=1, max_size=30))
def test_random_opcode_streams(chunks):
    only_ckpt_errors(fc.run_data_pkl, b"\x80\x02" + b"".join(chunks) + b".")


# ------------------------------------------------------------------------- crashes the campaign found, pinned
def test_campaign_crash_shard_name_with_a_newline_is_a_one_line_error(tmp_path):
    """scripts/fuzz_campaign.py --reader index, seed 0: an index entry naming a shard whose name holds a newline made
    TargetNotFound('…/model-00001-of-00002.safete&z4\\nsors: no such file'), a two-line error (the CLI escaped it,
    the library and the JSON output did not). Fixed in CkptError: where and what are escaped to one line."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safete&z4\nsors"}}))
    r = CliRunner().invoke(main, [str(d), "--format", "json"])
    assert r.exit_code == 1
    expected = f"{d}/model-00001-of-00002.safete&z4\\nsors: no such file"
    assert r.stderr == f"Error: {expected}\n"
    assert json.loads(r.stdout)["targets"][0]["error"] == expected


def test_lone_file_whose_name_holds_control_characters(tmp_path):
    """The same bug through a directory listing: a lone file named with a newline and an ANSI escape."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "evil\n\x1b[31m.safetensors").write_bytes(struct.pack("<Q", 2**63))
    with pytest.raises(CkptError) as e:
        from ckptcount.api import audit

        audit(str(d))
    assert str(e.value) == f"{d}/evil\\n\\x1b[31m.safetensors: header length 9223372036854775808 exceeds the 100000000-byte cap"


def test_mutator_is_deterministic_for_a_seed(seeds):
    a = [fc.mutate(random.Random("0:gguf"), "gguf", seeds["gguf"]) for _ in range(3)]
    b = [fc.mutate(random.Random("0:gguf"), "gguf", seeds["gguf"]) for _ in range(3)]
    assert a == b and any(x != seeds["gguf"][0] for x in a)
