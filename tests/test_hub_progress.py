"""Progress for many shards goes to the stream it is given (stderr), never stdout, and never when not a terminal."""

from __future__ import annotations

import io
import json
import struct

from conftest import MemSource

from ckptcount.targets import shards as hub




def shard(i: int) -> bytes:
    raw = json.dumps({f"layers.{i}.w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * 8


def sources(n: int) -> dict:
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return {name: MemSource(name, shard(i)) for i, name in enumerate(names)}


def test_bar_drawn_on_the_given_stream_and_results_unchanged(capsys):
    stream = io.StringIO()
    reads = hub.read_all(sources(12), progress_stream=stream)
    assert [r.tensors[0].name for r in reads.values()] == [f"layers.{i}.w" for i in range(12)]
    assert "shard headers" in stream.getvalue()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_no_bar_when_not_a_terminal_or_few_shards(monkeypatch):
    assert not hub.show_progress(100)  # pytest's stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert hub.show_progress(hub.PROGRESS_MIN_FILES) and not hub.show_progress(hub.PROGRESS_MIN_FILES - 1)
    monkeypatch.setenv("CKPTCOUNT_NO_PROGRESS", "1")
    assert not hub.show_progress(100)
