import json
import os
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


class MemSource:
    """An in-memory ByteSource (name, size(), read(offset, length)) for reader tests without files or network."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@pytest.fixture(params=["plain", "hub"])
def stand_in_hub(request, monkeypatch, tmp_path):
    """The suite's real HTTP stand-in Hub (tests/hubserver.py) on 127.0.0.1, empty, with huggingface_hub pointed at it
    through HF_ENDPOINT, a fresh HF_HOME, no token or offline mode from the environment, and short retry waits.

    Every test using it runs twice: against the plain server, and against the "hub" mode that behaves as the real Hub
    and its CDN do (gzip-compressed chunked JSON and text answers, weak ETags, the CDN on another host name)."""
    from hubserver import HubServer

    from ckptcount.sources import http as http_source

    server = HubServer(mode=request.param)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CKPTCOUNT_CACHE", raising=False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(http_source, "BASE_WAIT", 0.01)
    yield server
    server.close()


def safetensors_head(tensors: dict, *, metadata: dict | None = None, header_len: int | None = None) -> tuple[bytes, int]:
    """The 8-byte length + JSON header for zero-filled tensors {name: (dtype, shape)}, space-padded to exactly
    ``header_len`` bytes when given; returns (head, data bytes the tensors span)."""
    bits = {"F32": 32, "F16": 16, "BF16": 16, "I64": 64}
    obj: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * bits[dtype] // 8
        obj[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if header_len is not None:
        assert len(raw) <= header_len
        raw += b" " * (header_len - len(raw))
    return struct.pack("<Q", len(raw)) + raw, offset


@pytest.fixture(scope="session")
def tiny_sharded(tmp_path_factory):
    """A tiny GPT-2 saved sharded by transformers (tied head, not stored), and its parameter count from the model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=211, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("tiny-sharded")
    model.save_pretrained(folder, max_shard_size="40KB")
    oracle = sum(p.numel() for p in model.parameters())  # torch dedups the tied head
    return folder, oracle
