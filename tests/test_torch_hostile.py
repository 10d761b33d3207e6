"""Hostile PyTorch files: malicious pickles are reported and provably never executed; broken or hostile zips and
pickle bombs end in one-line errors with bounded memory and time.

Each hostile file is built here, byte by byte where the attack lives, with a comment naming the attack; a minimal
valid file is parsed first so each failure is the attack's and not the scaffold's.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptcount import CkptError, audit, load
from ckptcount.cli import main
from ckptcount.errors import TorchFileError
from ckptcount.formats.dispatch import read_file
from ckptcount.formats.pytorch.unpickler import MAX_PICKLE_BYTES

# ------------------------------------------------------------------------------------------------ building blocks
# A hand-written torch pickle for {"w": F32 tensor [2, 3] on storage "0"}, protocol 2, exactly as torch.save spells it.
TENSOR_W = (
    b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01"
    b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04"
    b"X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x06tq\x07QK\x00K\x02K\x03\x86K\x03K\x01\x86\x89"
    b"ccollections\nOrderedDict\n)Rtq\x08Rq\x09s."
)


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, stem: str = "archive", **kw) -> bytes:
    """A torch-layout zip: <stem>/data.pkl and <stem>/data/<key>, stored (torch never compresses)."""
    storages = {"0": bytes(24)} if storages is None else storages
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo(f"{stem}/data.pkl"), pkl)
        for key, data in storages.items():
            z.writestr(zipfile.ZipInfo(f"{stem}/data/{key}"), data)
        z.writestr(zipfile.ZipInfo(f"{stem}/version"), b"3\n")  # torch.load wants it; ckptcount does not read it
        for name, data in kw.get("extra", {}).items():
            z.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "model.pt") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def one_line_error(path: Path) -> str:
    r = CliRunner().invoke(main, [str(path)])
    assert r.exit_code == 1, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr
    return lines[0]


def test_minimal_valid_file_parses(tmp_path):
    ck = load(str(write(tmp_path, torch_zip(TENSOR_W))))
    assert [(t.name, t.shape, t.dtype, t.storage) for t in ck.tensors] == [("w", (2, 3), "F32", "0")]
    assert ck.findings == ()


def test_minimal_file_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    sd = torch.load(write(tmp_path, torch_zip(TENSOR_W)), weights_only=True)
    assert list(sd) == ["w"] and sd["w"].shape == (2, 3) and sd["w"].dtype == torch.float32


# ------------------------------------------------------------------------------------------------ malicious pickles
class System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):  # the classic: os.system at load time
        return (os.system, (self.cmd,))


class Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):  # GLOBAL builtins.eval
        return (eval, (self.code,))


class Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):  # builtins.exec
        return (exec, (self.code,))


def payloads(sentinel: Path) -> dict[str, tuple[bytes, str]]:
    touch = f"touch {sentinel}"
    py = f"open({str(sentinel)!r}, 'w').write('pwned')"
    return {
        # a __reduce__ calling os.system, next to a real-looking tensor
        "reduce-os-system": (pickle.dumps({"w": 1, "evil": System(touch)}, protocol=2), f"{os.system.__module__}.system"),
        # GLOBAL builtins.eval
        "global-eval": (pickle.dumps({"evil": Eval(py)}, protocol=2), "builtins.eval"),
        # a nested exec, deep inside the state dict, with protocol 4 (STACK_GLOBAL, MEMOIZE, FRAME)
        "nested-exec": (pickle.dumps({"model": {"layers": [{"a": (1, [Exec(py)])}]}}, protocol=4), "builtins.exec"),
        # protocol 0 INST opcode: module and name as text lines, arguments after a MARK
        "inst-os-system": (b"(S'" + touch.encode() + b"'\nios\nsystem\n.", "os.system"),
        # NEWOBJ of an arbitrary class (its __setstate__/__init__ would run)
        "newobj-subprocess": (b"\x80\x02csubprocess\nPopen\n]\x85\x81.", "subprocess.Popen"),
    }


@pytest.mark.parametrize("attack", ["reduce-os-system", "global-eval", "nested-exec", "inst-os-system", "newobj-subprocess"])
def test_malicious_pickle_flagged_and_never_executed(tmp_path, attack):
    sentinel = tmp_path / "pwned"
    pkl, ref = payloads(sentinel)[attack]
    path = write(tmp_path, torch_zip(pkl, storages={}))
    report = audit(str(path))
    assert not sentinel.exists()
    unsafe = [f for f in report.checkpoint.findings if f.kind == "unsafe-pickle"]
    assert len(unsafe) == 1 and ref in unsafe[0].message and "not executed" in unsafe[0].message
    assert "can run code" in unsafe[0].message
    r = CliRunner().invoke(main, [str(path), "--strict", "--format", "json"])
    assert r.exit_code == 4
    assert not sentinel.exists()


def test_payload_is_live_when_unpickled_by_pickle(tmp_path):
    """Control: the same bytes really do run code under pickle.loads, so the test above can fail."""
    sentinel = tmp_path / "control"
    pickle.loads(payloads(sentinel)["global-eval"][0])
    assert sentinel.exists()


def test_malicious_entry_in_real_torch_save_keeps_the_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"weight": torch.zeros(4, 4), "evil": System(f"touch {sentinel}")}, path)  # saving runs nothing
    report = audit(str(path))
    assert not sentinel.exists()
    assert [t.name for t in report.checkpoint.tensors] == ["weight"] and report.counts.parameters == 16
    assert [f.kind for f in report.checkpoint.findings] == ["unsafe-pickle"]
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader agrees it is unsafe
        torch.load(path, weights_only=True)


def test_unknown_but_harmless_global_is_flagged_without_the_code_execution_wording(tmp_path):
    import argparse

    pkl = pickle.dumps({"hparams": argparse.Namespace(lr=0.1)}, protocol=2)
    report = audit(str(write(tmp_path, torch_zip(pkl, storages={}))))
    (f,) = report.checkpoint.findings
    assert f.kind == "unsafe-pickle" and "argparse.Namespace" in f.message and "not a tensor-rebuild function" in f.message


# ------------------------------------------------------------------------------------------------ hostile zips
def _eocd(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def test_truncated_central_directory(tmp_path):
    good = torch_zip(TENSOR_W)
    e = _eocd(good)
    (cd_size, cd_offset) = struct.unpack("<II", good[e + 12 : e + 20])
    # cut 20 bytes out of the middle of the central directory; the end record still claims the full directory
    bad = good[: cd_offset + 30] + good[cd_offset + 50 :]
    assert "central directory" in one_line_error(write(tmp_path, bad))
    # the end record is patched to the shorter size: now an entry runs past the directory
    e2 = _eocd(bad)
    bad2 = bad[: e2 + 12] + struct.pack("<I", cd_size - 20) + bad[e2 + 16 :]
    msg = one_line_error(write(tmp_path, bad2, "b.pt"))
    assert "truncated central directory" in msg or "missing or corrupt" in msg


def test_file_cut_before_its_end_record(tmp_path):
    good = torch_zip(TENSOR_W)
    assert "neither a zip archive nor a pickle stream" in one_line_error(write(tmp_path, good[:-30]))


def test_zip64_written_by_zipfile_is_read(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        with z.open(zipfile.ZipInfo("archive/data.pkl"), "w", force_zip64=True) as f:
            f.write(TENSOR_W)
        with z.open(zipfile.ZipInfo("archive/data/0"), "w", force_zip64=True) as f:
            f.write(bytes(24))
    ck = load(str(write(tmp_path, buf.getvalue())))
    assert [t.name for t in ck.tensors] == ["w"]


def _zip64_tail(cd_offset: int, cd_size: int, entries: int, z64_at: int) -> bytes:
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    loc = struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return z64 + loc + eocd


def test_hostile_zip64_records(tmp_path):
    good = torch_zip(TENSOR_W)
    e = _eocd(good)
    n, cd_size, cd_offset = struct.unpack("<HII", good[e + 10 : e + 20])
    body = good[:e]
    # a valid ZIP64 end record parses
    ok = body + _zip64_tail(cd_offset, cd_size, n, len(body))
    assert [t.name for t in load(str(write(tmp_path, ok, "ok.pt"))).tensors] == ["w"]
    # ZIP64 directory size of 2**62 bytes: refused before any allocation
    huge = body + _zip64_tail(cd_offset, 2**62, n, len(body))
    assert "over the" in one_line_error(write(tmp_path, huge, "huge.pt"))
    # ZIP64 entry count of 2**40 in a directory of a few hundred bytes
    many = body + _zip64_tail(cd_offset, cd_size, 2**40, len(body))
    assert "cannot hold" in one_line_error(write(tmp_path, many, "many.pt"))
    # the locator points past itself / at garbage
    lost = body + _zip64_tail(cd_offset, cd_size, n, 2**50)
    assert "ZIP64 end record" in one_line_error(write(tmp_path, lost, "lost.pt"))
    garbage = body + _zip64_tail(cd_offset, cd_size, n, 3)
    assert "no ZIP64 end record" in one_line_error(write(tmp_path, garbage, "garbage.pt"))


@pytest.mark.parametrize("name", ["archive/../../etc/passwd", "/abs/data.pkl", "archive/./data/0", "C:/x/y"])
def test_entry_names_that_leave_the_archive(tmp_path, name):
    bad = torch_zip(TENSOR_W, extra={name: b"x"})
    if name.startswith("/"):  # zipfile strips a leading slash when writing: put it back byte for byte
        bad = bad.replace(name[1:].encode(), name.encode()[:-1], 2)
    msg = one_line_error(write(tmp_path, bad))
    assert "not a plain relative path" in msg or "local header" in msg


def test_duplicate_entries(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning):
        z.writestr("archive/data.pkl", TENSOR_W)
        z.writestr("archive/data/0", bytes(24))
        z.writestr("archive/data.pkl", TENSOR_W)
    assert "appears twice" in one_line_error(write(tmp_path, buf.getvalue()))


def test_storage_size_and_missing_storage(tmp_path):
    assert "holds 20" in one_line_error(write(tmp_path, torch_zip(TENSOR_W, storages={"0": bytes(20)}), "a.pt"))
    assert "does not hold" in one_line_error(write(tmp_path, torch_zip(TENSOR_W, storages={}), "b.pt"))
    # a tensor that views past its storage: [2, 3] with stride (3, 1) from offset 1 needs 7 elements of 6
    shifted = TENSOR_W.replace(b"QK\x00K\x02", b"QK\x01K\x02")
    assert "views elements up to 7" in one_line_error(write(tmp_path, torch_zip(shifted), "c.pt"))


class Sparse:
    """A ByteSource for a file of ``size`` bytes: ``head`` at 0, ``tail`` at the end, zeros between; counts reads."""

    def __init__(self, head: bytes, tail: bytes, size: int):
        self.name, self.head, self.tail, self._size = "big.pt", head, tail, size
        self.reads, self.bytes_read = [], 0

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.bytes_read += length
        out = bytearray(length)
        for at, data in ((0, self.head), (self._size - len(self.tail), self.tail)):
            lo, hi = max(offset, at), min(offset + length, at + len(data))
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(out)


def test_data_pkl_declared_over_the_cap_is_not_read():
    # a 100 MB file whose data.pkl entry really spans MAX_PICKLE_BYTES + 1 bytes: refused from the directory alone
    n = MAX_PICKLE_BYTES + 1
    name = b"archive/data.pkl"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, n, n, len(name), 0) + name
    cd_at = len(local) + n
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, n, n, len(name), 0, 0, 0, 0, 0, 0) + name
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_at, 0)
    src = Sparse(local, central + eocd, cd_at + len(central) + len(eocd))
    with pytest.raises(TorchFileError, match=f"over the {MAX_PICKLE_BYTES}-byte limit"):
        read_file(src, "big.pt", "big.pt")
    assert len(src.reads) == 1 and src.bytes_read <= 8192  # the tail only


def test_compressed_bomb_inflates_no_further_than_declared(tmp_path):
    # data.pkl deflated from 50 MB of one byte, but its entry declares 100 bytes: inflation stops at 101
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N" * 50_000_000)
    data = buf.getvalue()
    first = data.index(b"PK\x01\x02")
    data = data[: first + 24] + struct.pack("<I", 100) + data[first + 28 :]
    tracemalloc.start()
    with pytest.raises(TorchFileError, match="declared 100 bytes"):
        load(str(write(tmp_path, data)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000


# ------------------------------------------------------------------------------------------------ pickle bombs
def _bounded(path: Path, limit_bytes: int = 60_000_000, limit_s: float = 10.0):
    tracemalloc.start()
    t = time.perf_counter()
    try:
        return load(str(path))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_bytes and time.perf_counter() - t < limit_s


def test_deep_nesting_is_walked_without_recursion(tmp_path):
    n = 50_000  # 50k nested lists: [[[[...]]]]; recursive walkers die at ~1000
    pkl = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    ck = _bounded(write(tmp_path, torch_zip(pkl, storages={})))
    assert ck.tensors == ()


def test_deep_nesting_around_a_tensor_names_it_by_its_path(tmp_path):
    n = 5_000
    inner = TENSOR_W[2:-1]  # the dict {"w": tensor} without PROTO/STOP
    pkl = b"\x80\x02" + b"]" * n + inner + b"a" * n + b"."
    ck = _bounded(write(tmp_path, torch_zip(pkl)))
    assert len(ck.tensors) == 1 and ck.tensors[0].name.endswith(".0.0.w") and ck.tensors[0].name.startswith("0.0.")


def test_billion_laughs_memo_references_walked_once(tmp_path):
    # L0 = {"w": tensor}; L(i) = [L(i-1), L(i-1)] for 64 levels: 2**64 paths to one tensor
    inner = TENSOR_W[2:-1]
    pkl = b"\x80\x02" + inner + b"r\x00\x00\x00\x00"  # LONG_BINPUT 0
    for i in range(1, 65):
        pkl += b"0" + b"j" + struct.pack("<I", i - 1) + b"j" + struct.pack("<I", i - 1) + b"\x86r" + struct.pack("<I", i)
    pkl += b"."
    ck = _bounded(write(tmp_path, torch_zip(pkl)), limit_s=5.0)
    assert [t.name for t in ck.tensors] == ["0.0." + ".".join(["0"] * 62) + ".w"] or len(ck.tensors) == 1
    assert any(f.kind == "repeated-object" for f in ck.findings)


@pytest.mark.parametrize(
    "attack,pkl,message",
    [
        ("BINUNICODE8 of 2**60 bytes", b"\x80\x04\x8d" + struct.pack("<Q", 2**60) + b"abc.", "wants"),
        ("BINBYTES of 4 GB", b"\x80\x03B\xff\xff\xff\xffabc.", "wants"),
        ("LONG4 of 2 GB", b"\x80\x02\x8b\xff\xff\xff\x7f.", "wants"),
        ("memo key never stored", b"\x80\x02h\x07.", "never stored"),
        ("no STOP", b"\x80\x02}q\x00", "without STOP"),
        ("unknown opcode", b"\x80\x02\xff.", "unknown opcode"),
        ("stack underflow", b"\x80\x02a.", "underflow"),
        ("out-of-band buffer", b"\x80\x05\x97.", "out-of-band"),
        ("rebuild with a non-storage", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x00K\x00)h\x00tR.", "never stored"),
        ("rebuild with a string storage", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X\x01\x00\x00\x00sK\x00)))tR.", "not a storage"),
        ("persistent id of the wrong shape", b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent id"),
        ("negative shape", TENSOR_W.replace(b"K\x02K\x03\x86K\x03", b"J\xfe\xff\xff\xffK\x03\x86K\x03"), "size is not"),
        ("protocol 9", b"\x80\x09N.", "protocol 9"),
        ("bytes after STOP", TENSOR_W + b"junk", "after its STOP"),
    ],
)
def test_pickle_bombs_and_garbage_are_one_line_errors(tmp_path, attack, pkl, message):
    msg = one_line_error(write(tmp_path, torch_zip(pkl)))
    assert message in msg, attack
    assert "model.pt" in msg and "pickle byte" in msg or "STOP" in msg


def test_not_a_torch_file(tmp_path):
    assert "neither a zip" in one_line_error(write(tmp_path, b"hello world" * 10, "x.bin"))
    assert "magic number" in one_line_error(write(tmp_path, pickle.dumps({"a": 1}, protocol=2), "y.bin"))
    assert "no 'x/data.pkl'" in one_line_error(write(tmp_path, torch_zip(TENSOR_W).replace(b"archive/data.pkl", b"archive/other.pk"), "z.pt")).replace("archive", "x")
    tar = bytearray(1024)
    tar[257:262] = b"ustar"
    tar[0] = 0x80
    assert "tar-format" in one_line_error(write(tmp_path, bytes(tar), "old.pt"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_byte_flips_only_raise_ckpt_errors(tmp_path, flips):
    good = bytearray(torch_zip(TENSOR_W))
    for pos, value in flips:
        good[pos % len(good)] = value
    path = write(tmp_path, bytes(good), "fuzz.pt")
    try:
        load(str(path))
    except CkptError as e:
        assert "\n" not in str(e)
