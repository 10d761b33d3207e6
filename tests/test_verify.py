"""--verify-ties: content checks of the token embedding against the output head, and of tied pairs.

Tiny real checkpoints, written by transformers and safetensors. Every expected number (Pearson r, max |diff|, the
identical flag, mean/std/min/max) is computed here with numpy from the tensors that were saved, never from ckptcount:
r = np.corrcoef in float64 over the head's orientation. The torch, numpy and blockwise paths must agree with it to 1e-6,
and the bytes read must be exactly the tensors' spans.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file, save_file, save_model  # noqa: E402

from ckptcount import audit  # noqa: E402
from ckptcount.cli import main  # noqa: E402
from ckptcount.records import DTYPE_BITS  # noqa: E402
from ckptcount.verify.backends import TORCH_DTYPES, fp8_values, resolve  # noqa: E402
from ckptcount.verify.compare import compare  # noqa: E402
from ckptcount.verify.run import verify_report  # noqa: E402
from ckptcount.verify.spans import Located, local_opener  # noqa: E402

T = transformers
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
V, D = 96, 32


def _llama_cfg(tied: bool):
    return T.LlamaConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=V, tie_word_embeddings=tied)


def _write(folder: Path, tensors: dict, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """name -> (folder, embedding tensor, head tensor as stored or None)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("verify")
    out = {}

    # untied LLaMA written by transformers: independent random matrices, r ~ 0
    m = T.LlamaForCausalLM(_llama_cfg(False))
    m.save_pretrained(root / "llama-untied")
    sd = m.state_dict()
    out["llama-untied"] = (root / "llama-untied", sd["model.embed_tokens.weight"], sd["lm_head.weight"])
    cfg = json.loads((root / "llama-untied" / "config.json").read_text())

    # Qwen3 tied by config AND lm_head stored as a full duplicate (as in Qwen/Qwen3-0.6B)
    q = T.Qwen3ForCausalLM(T.Qwen3Config(hidden_size=D, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, head_dim=16, vocab_size=V, tie_word_embeddings=True))
    q.save_pretrained(root / "qwen3-dup")
    sd = load_file(str(root / "qwen3-dup" / "model.safetensors"))
    assert "lm_head.weight" not in sd  # transformers drops the tied head...
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # ...the Hub repo stores it anyway
    save_file(sd, str(root / "qwen3-dup" / "model.safetensors"), metadata={"format": "pt"})
    out["qwen3-dup"] = (root / "qwen3-dup", sd["model.embed_tokens.weight"], sd["lm_head.weight"])

    # GPT-2 tied, safetensors.torch.save_model: one matrix, kept under the lexicographically first name (lm_head)
    g = T.GPT2LMHeadModel(T.GPT2Config(n_embd=D, n_layer=1, n_head=2, vocab_size=V, n_positions=16))
    (root / "gpt2-save-model").mkdir()
    save_model(g, str(root / "gpt2-save-model" / "model.safetensors"))
    g.config.to_json_file(root / "gpt2-save-model" / "config.json")
    out["gpt2-save-model"] = (root / "gpt2-save-model", g.transformer.wte.weight.detach().clone(), None)

    emb = sd["model.embed_tokens.weight"]
    norm = torch.ones(D)
    near = emb + 1e-3 * torch.randn_like(emb)
    other = torch.randn_like(emb)
    untied = dict(cfg, tie_word_embeddings=False)
    tied = dict(cfg, tie_word_embeddings=True)
    cases = {
        "near-copy": ({"model.embed_tokens.weight": emb, "lm_head.weight": near}, untied),
        "tied-different": ({"model.embed_tokens.weight": emb, "lm_head.weight": other}, tied),
        "untied-identical": ({"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone()}, untied),
        "transposed-identical": ({"model.embed_tokens.weight": emb, "lm_head.weight": emb.t().contiguous()}, untied),
        "transposed-near": ({"model.embed_tokens.weight": emb, "lm_head.weight": near.t().contiguous()}, untied),
        "bf16-near": ({"model.embed_tokens.weight": emb.bfloat16(), "lm_head.weight": near.bfloat16()}, untied),
        "f16-vs-f8": ({"model.embed_tokens.weight": emb.half(), "lm_head.weight": emb.to(torch.float8_e4m3fn)}, untied),
    }
    for name, (tensors, config) in cases.items():
        tensors = dict(tensors, **{"model.norm.weight": norm})
        _write(root / name, tensors, config)
        out[name] = (root / name, tensors["model.embed_tokens.weight"], tensors["lm_head.weight"])
    return out


def _f64(t) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def _expected(emb, head) -> dict:
    """The oracle, in the head's orientation: a [D, V] head is compared with the embedding transposed."""
    e = _f64(emb)
    h = _f64(head)
    if h.shape != e.shape:
        e = e.T
    same = emb.dtype == head.dtype and bool(
        np.array_equal(emb.contiguous().view(torch.uint8).numpy().reshape(*emb.shape, -1).transpose(*((1, 0, 2) if h.shape != tuple(emb.shape) else (0, 1, 2))),
                       head.contiguous().view(torch.uint8).numpy().reshape(*head.shape, -1))
    )
    return {"r": float(np.corrcoef(e.ravel(), h.ravel())[0, 1]), "diff": float(np.abs(e - h).max()), "identical": same}


def _verify(folder, **kw):
    opener = local_opener(str(folder))
    report = verify_report(audit(str(folder)), open_source=opener, **kw)
    return report, opener


PAIRS = ["llama-untied", "qwen3-dup", "near-copy", "tied-different", "untied-identical", "transposed-identical",
         "transposed-near", "bf16-near", "f16-vs-f8"]


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_embedding_vs_head_matches_numpy_oracle(ckpts, name, backend):
    folder, emb, head = ckpts[name]
    want = _expected(emb, head)
    report, opener = _verify(folder, backend=backend, device="cpu")
    v = report.verification
    c = v.embedding_vs_head
    assert (v.embedding, v.head) == ("model.embed_tokens.weight", "lm_head.weight")
    assert c.skipped is None
    assert c.pearson_r == pytest.approx(want["r"], abs=1e-9)
    assert c.max_abs_diff == pytest.approx(want["diff"], abs=1e-12)
    assert c.identical is want["identical"]
    assert c.orientation == ("transposed" if name.startswith("transposed") else "same")
    assert (c.backend, c.device) == (backend, "cpu")
    # stats of each tensor against numpy
    s = c.stats["lm_head.weight"]
    h = _f64(head)
    assert (s["mean"], s["std"], s["min"], s["max"]) == pytest.approx((h.mean(), h.std(), h.min(), h.max()), rel=1e-9, abs=1e-12)
    # bytes read are exactly the two tensors' spans, counted by the file source
    spans = emb.numel() * emb.element_size() + head.numel() * head.element_size()
    assert c.bytes_read == spans
    assert sum(f.bytes_read for f in opener.opened.values()) == spans


@pytest.fixture(scope="module")
def bins(ckpts, tmp_path_factory):
    """Each case's tensors saved by torch.save as a zip and in the legacy (pre-1.6) format, with its config.json."""
    root = tmp_path_factory.mktemp("verify-bin")
    out = {}
    for name, (folder, _, _) in ckpts.items():
        tensors = load_file(str(folder / "model.safetensors"))
        for kind, zipped in (("zip", True), ("legacy", False)):
            if not zipped and any(t.dtype == torch.float8_e4m3fn for t in tensors.values()):
                continue  # torch writes float8 storages untyped in the legacy format and cannot load them itself
            d = root / f"{name}-{kind}"
            d.mkdir()
            torch.save(tensors, d / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
            (d / "config.json").write_bytes((folder / "config.json").read_bytes())
            out[(name, kind)] = d
    return out


BINS = [(name, kind) for name in PAIRS for kind in ("zip", "legacy") if (name, kind) != ("f16-vs-f8", "legacy")]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("name, kind", BINS, ids=[f"{n}-{k}" for n, k in BINS])
def test_pytorch_files_are_verified_like_safetensors(ckpts, bins, name, kind, backend):
    """The same tensors in a torch.save file: the embedding and head bytes are read from their storages (the zip's
    stored entries, or the legacy file's storage area) and give the numpy oracle's numbers, reading only them.
    (Not f16-vs-f8 in the legacy format: torch writes float8 storages untyped there and cannot load them itself.)"""
    _, emb, head = ckpts[name]
    want = _expected(emb, head)
    report, opener = _verify(bins[(name, kind)], backend=backend, device="cpu")
    c = report.verification.embedding_vs_head
    assert report.checkpoint.format == ("pytorch" if kind == "zip" else "pytorch-legacy")
    assert (c.backend, c.orientation) == (backend, "transposed" if name.startswith("transposed") else "same")
    assert c.skipped is None
    assert c.pearson_r == pytest.approx(want["r"], abs=1e-9)
    assert c.max_abs_diff == pytest.approx(want["diff"], abs=1e-12)
    assert c.identical is want["identical"]
    spans = emb.numel() * emb.element_size() + head.numel() * head.element_size()
    assert c.bytes_read == spans
    # and nothing else but, in a zip, the 30-byte local header of each of the two storages
    header_reads = 2 * 30 if kind == "zip" else 0
    assert sum(f.bytes_read for f in opener.opened.values()) == spans + header_reads


def test_a_strided_pytorch_view_is_not_read(tmp_path):
    emb = torch.randn(V, D)
    (tmp_path / "m").mkdir()
    # the head is emb.t() itself: a transposed view of the embedding's storage, not a row-major run of it
    torch.save({"model.embed_tokens.weight": emb, "lm_head.weight": emb.t()}, tmp_path / "m" / "pytorch_model.bin")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    report, _ = _verify(tmp_path / "m", backend="numpy", device="cpu")
    c = report.verification.embedding_vs_head
    assert c.skipped == "lm_head.weight is a strided view of its storage (a transpose or a step): not read"


def test_findings_per_case(ckpts):
    kinds = {}
    for name in PAIRS:
        report, _ = _verify(ckpts[name][0])
        kinds[name] = sorted(f.kind for f in report.checkpoint.findings)
    assert kinds == {
        "llama-untied": [],  # r ~ 0, untied: nothing to say
        "qwen3-dup": [],  # tied by config and an exact duplicate: consistent
        "near-copy": ["near-copy"],
        "tied-different": ["tied-but-different"],
        "untied-identical": ["untied-but-identical"],
        "transposed-identical": ["untied-but-identical"],
        "transposed-near": ["near-copy"],
        "bf16-near": ["near-copy"],
        "f16-vs-f8": ["near-copy"],  # fp8 rounding of the same matrix: r > 0.99, different bytes (and dtypes)
    }
    assert abs(_expected(*ckpts["llama-untied"][1:])["r"]) < 0.2


def test_blockwise_torch_numpy_agree(ckpts):
    """One row per block, a few rows, everything in one block; torch and numpy: all within 1e-6 (in fact ~1e-12)."""
    folder, emb, head = ckpts["transposed-near"]
    report = audit(str(folder))
    files = {f.path: f for f in report.checkpoint.files}
    got = []
    for backend in ("torch", "numpy"):
        for block in (1, 4096, 10**9):
            opener = local_opener(str(folder))
            loc = {}
            for t in report.checkpoint.tensors:
                loc[t.name] = Located(t, opener(t.file), 8 + files[t.file].header_bytes + t.begin)
            c = compare(loc["model.embed_tokens.weight"], loc["lm_head.weight"], engine=resolve("cpu", backend), block_bytes=block)
            got.append((c.pearson_r, c.max_abs_diff, c.stats["model.embed_tokens.weight"]["std"]))
            assert c.bytes_read == emb.numel() * 4 * 2
    want = _expected(emb, head)
    for r, d, s in got:
        assert r == pytest.approx(want["r"], abs=1e-6)
        assert d == pytest.approx(want["diff"], abs=1e-6)
        assert s == pytest.approx(got[0][2], rel=1e-9)
        assert r == pytest.approx(got[0][0], abs=1e-12)


def test_structural_tie_save_model(ckpts):
    folder, wte, _ = ckpts["gpt2-save-model"]
    report, opener = _verify(folder)
    v = report.verification
    assert set(v.stored) == {"lm_head.weight"}  # save_model kept the lexicographically first name
    assert (v.embedding, v.head) == ("transformer.wte.weight", "lm_head.weight")
    c = v.embedding_vs_head
    assert c.orientation == "structural" and c.pearson_r == 1.0 and c.identical is True
    x = _f64(wte)
    s = c.stats["lm_head.weight"]
    assert (s["mean"], s["std"], s["min"], s["max"]) == pytest.approx((x.mean(), x.std(), x.min(), x.max()), rel=1e-9, abs=1e-12)
    assert c.bytes_read == wte.numel() * 4 == sum(f.bytes_read for f in opener.opened.values())
    (tie,) = [g for g in report.ties if "lm_head.weight" in g.names]
    assert v.ties[tie.names] is c
    assert not report.checkpoint.findings


def test_fp8_and_bf16_decoding_matches_torch():
    """The pure-Python fp8 tables (numpy path) against torch's own casts, for all 256 codes of every format."""
    codes = torch.arange(256, dtype=torch.uint8)
    for dtype, attr in TORCH_DTYPES.items():
        if not dtype.startswith("F8"):
            continue
        want = codes.view(getattr(torch, attr)).to(torch.float64).numpy()
        got = np.array(fp8_values(dtype))
        assert np.array_equal(np.isnan(got), np.isnan(want)), dtype
        assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)]), dtype
    x = torch.randn(1000).bfloat16()
    numpy_engine = resolve("cpu", "numpy")
    raw = bytearray(x.view(torch.uint16).numpy().tobytes())
    assert np.array_equal(numpy_engine.decode(raw, "BF16"), x.double().numpy())
    assert torch.equal(resolve("cpu", "torch").decode(raw, "BF16"), x.double())


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F16", "F64"])
def test_every_dtype_pair_torch_equals_numpy(tmp_path, dtype):
    torch.manual_seed(1)
    t_dtype = getattr(torch, TORCH_DTYPES[dtype])
    emb = (torch.rand(40, 8) + 0.1).to(t_dtype)  # positive: F8_E8M0 holds powers of two only
    head = (torch.rand(40, 8) + 0.1).to(t_dtype)
    folder = _write(tmp_path / dtype, {"model.embed_tokens.weight": emb, "lm_head.weight": head}, {"tie_word_embeddings": False})
    results = [_verify(folder, backend=b, device="cpu")[0].verification.embedding_vs_head for b in ("torch", "numpy")]
    want = _expected(emb, head)
    for c in results:
        assert c.pearson_r == pytest.approx(want["r"], abs=1e-9)
        assert c.max_abs_diff == pytest.approx(want["diff"], abs=1e-12)
        assert c.bytes_read == 2 * 40 * 8 * DTYPE_BITS[dtype] // 8


def test_cli_json_strict_and_exit_codes(ckpts):
    runner = CliRunner()
    folder = str(ckpts["tied-different"][0])
    r = runner.invoke(main, [folder, "--verify-ties", "--format", "json", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)["targets"][0]
    evh = d["embedding_vs_head"]
    assert (evh["embedding"], evh["head"]) == ("model.embed_tokens.weight", "lm_head.weight")
    want = _expected(*ckpts["tied-different"][1:])
    assert evh["verification"]["pearson_r"] == pytest.approx(want["r"], abs=1e-9)
    assert evh["verification"]["identical"] is False and evh["verification"]["device"] == "cpu"
    assert [f["kind"] for f in d["findings"]] == ["tied-but-different"]
    tie = next(t for t in d["ties"] if "lm_head.weight" in t["names"])
    assert tie["verification"]["bytes_read"] == 2 * V * D * 4
    assert runner.invoke(main, [folder, "--verify-ties", "--strict"]).exit_code == 4
    assert runner.invoke(main, [str(ckpts["qwen3-dup"][0]), "--verify-ties", "--strict"]).exit_code == 0
    assert runner.invoke(main, [folder, "--strict"]).exit_code == 0  # without --verify-ties nothing is read
    # the table: one note line, stdout only; nothing on stderr (no progress bar when stderr is not a terminal)
    r = runner.invoke(main, [str(ckpts["transposed-identical"][0]), "--verify-ties"])
    assert "head stored transposed" in r.stdout and "untied-but-identical" in r.stdout and r.stderr == ""


def test_cli_cuda_without_cuda_is_one_line_exit_2(ckpts):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = CliRunner().invoke(main, [str(ckpts["qwen3-dup"][0]), "--verify-ties", "--device", "cuda"])
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: --device: cuda: torch") and r.stderr.count("\n") == 1
    assert r.stdout == ""


def test_without_torch_numpy_path_and_message(ckpts, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    r = CliRunner().invoke(main, [str(ckpts["near-copy"][0]), "--verify-ties", "--format", "json"])
    assert r.exit_code == 0
    assert "pip install 'ckptcount[torch]'" in r.stderr
    c = json.loads(r.stdout)["targets"][0]["embedding_vs_head"]["verification"]
    assert (c["backend"], c["device"]) == ("numpy", "cpu")
    assert c["pearson_r"] == pytest.approx(_expected(*ckpts["near-copy"][1:])["r"], abs=1e-9)
    r = CliRunner().invoke(main, [str(ckpts["near-copy"][0]), "--verify-ties", "--device", "cuda"])
    assert r.exit_code == 2 and "CUDA" in r.stderr


def test_header_only_fixture_is_not_verified():
    report = verify_report(audit(str(FIXTURES / "gpt2")), device="cpu")
    kinds = [f.kind for f in report.checkpoint.findings]
    assert kinds == ["not-verified"]
    assert "holds only its header" in report.checkpoint.findings[0].message
    assert report.verification.embedding_vs_head.bytes_read == 0


def test_torch_bin_shared_storage_needs_no_read(tmp_path):
    """torch.save of a tied model: both names view one storage; the check says so without reading data."""
    g = T.GPT2LMHeadModel(T.GPT2Config(n_embd=D, n_layer=1, n_head=2, vocab_size=V, n_positions=16))
    (tmp_path / "bin").mkdir()
    torch.save(g.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    g.config.to_json_file(tmp_path / "bin" / "config.json")
    report = audit(str(tmp_path / "bin"))
    if report.checkpoint.format != "pytorch":
        pytest.skip("no PyTorch zip reader in this tree")
    v = verify_report(report, device="cpu").verification
    c = v.embedding_vs_head
    assert c.orientation == "shared-storage" and c.identical is True and c.bytes_read == 0
    assert not [f for f in report.checkpoint.findings if f.kind in ("tied-but-different", "not-verified")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(ckpts):
    for name in ("transposed-near", "bf16-near", "f16-vs-f8", "tied-different"):
        folder, emb, head = ckpts[name]
        gpu = _verify(folder, device="cuda")[0].verification.embedding_vs_head
        cpu = _verify(folder, device="cpu", backend="numpy")[0].verification.embedding_vs_head
        assert gpu.device == "cuda" and gpu.backend == "torch"
        assert gpu.pearson_r == pytest.approx(cpu.pearson_r, abs=1e-6)
        assert gpu.max_abs_diff == pytest.approx(cpu.max_abs_diff, abs=1e-6)
        assert gpu.identical is cpu.identical
        assert not math.isnan(gpu.pearson_r)


@pytest.fixture
def hub(stand_in_hub):
    return stand_in_hub


def test_remote_reads_exactly_the_spans(ckpts, hub, monkeypatch):
    """Over the test Hub (real HTTP, LFS redirected to a CDN origin): range requests for exactly the tensors' bytes."""
    from hubserver import load_dir

    import ckptcount.verify.spans as spans

    monkeypatch.setattr(spans, "READ_CHUNK", 4096)  # several chunks per span, read in parallel
    folder, emb, head = ckpts["transposed-near"]
    hub.add("org/transposed-near", load_dir(folder))
    report = audit("org/transposed-near")
    assert report.checkpoint.origin
    hub.reset_log()
    out = verify_report(report, device="cpu", block_bytes=D * 40 * 64)
    c = out.verification.embedding_vs_head
    local = _verify(folder, device="cpu")[0].verification.embedding_vs_head
    assert c.pearson_r == pytest.approx(local.pearson_r, abs=1e-12)  # other block size: merge order differs
    assert (c.max_abs_diff, c.identical, c.orientation) == (local.max_abs_diff, local.identical, "transposed")
    spans = 2 * V * D * 4
    assert c.bytes_read == spans
    data = [r for r in hub.requests() if r.range and r.status == 206]
    assert sum(r.sent for r in data) == spans
    assert max(r.sent for r in data) <= 4096  # one request never exceeds READ_CHUNK
    assert all(r.host == "cdn" for r in data[1:])  # after the first redirect, reads go straight to the CDN
    r = CliRunner().invoke(main, ["org/transposed-near", "--verify-ties", "--strict"])
    assert r.exit_code == 4 and "near-copy" in r.stdout


def test_remote_pytorch_zip_reads_the_local_headers_then_the_spans(ckpts, bins, hub):
    """A .bin on the test Hub: per storage one 30-byte range for its zip local header, then the tensor's bytes."""
    from hubserver import load_dir

    _, emb, head = ckpts["near-copy"]
    hub.add("org/near-bin", load_dir(bins[("near-copy", "zip")]))
    report = audit("org/near-bin")
    hub.reset_log()
    c = verify_report(report, device="cpu", backend="numpy").verification.embedding_vs_head
    want = _expected(emb, head)
    assert c.skipped is None and c.pearson_r == pytest.approx(want["r"], abs=1e-9) and c.identical is False
    data = [r for r in hub.requests() if r.range and r.status == 206]
    assert sorted(r.sent for r in data if r.sent == 30) == [30, 30]
    assert sum(r.sent for r in data) == 2 * 30 + 2 * V * D * 4


# --------------------------------------------------------------------------------------------------------------------
# The streaming core at scale: many chunks, dot sub-slices, blocks, threads; memory; short files.


def _locate_all(folder):
    report = audit(str(folder))
    files = {f.path: f for f in report.checkpoint.files}
    opener = local_opener(str(folder))
    loc = {t.name: Located(t, opener(t.file), 8 + files[t.file].header_bytes + t.begin) for t in report.checkpoint.tensors}
    return loc, opener


@pytest.fixture(scope="module")
def offset_pair(tmp_path_factory):
    """A 257 x 75 F32 embedding far from zero mean (centring matters) and a head equal to it but for one element in
    its last rows, so 'identical' must be decided by the last chunk."""
    rng = np.random.default_rng(7)
    emb = (rng.standard_normal((257, 75)) * 0.02 + 3.0).astype(np.float32)
    head = emb.copy()
    head[250, 11] += np.float32(0.5)
    folder = _write(tmp_path_factory.mktemp("offset"), {"model.embed_tokens.weight": torch.from_numpy(emb),
                                                        "lm_head.weight": torch.from_numpy(head)}, {"tie_word_embeddings": False})
    return folder, emb, head


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("block", [10**9, 20_000])
def test_many_chunks_blocks_and_threads_match_oracle(offset_pair, monkeypatch, backend, workers, block):
    """Chunks of 1000 elements (dots in slices of 128) over 19,275 elements, blocks of a few rows, 1 or 3 threads:
    the same r, max diff, stats and identical flag as np.corrcoef in float64 over the whole tensors."""
    import ckptcount.verify.backends as backends
    import ckptcount.verify.compare as comparing

    monkeypatch.setattr(backends, "CHUNK", 1000)
    monkeypatch.setattr(backends, "TORCH_CHUNK", 700)
    monkeypatch.setattr(backends, "DOT", 128)
    monkeypatch.setattr(comparing, "COMPUTE_THREADS", 3)  # the chunk ranges of a block split over threads, merged in order
    folder, emb, head = offset_pair
    loc, opener = _locate_all(folder)
    engine = resolve("cpu", backend)
    assert engine.chunk == (1000 if backend == "numpy" else 700)
    c = compare(loc["model.embed_tokens.weight"], loc["lm_head.weight"], engine=engine, block_bytes=block, workers=workers)
    e, h = emb.astype(np.float64), head.astype(np.float64)
    assert c.pearson_r == pytest.approx(float(np.corrcoef(e.ravel(), h.ravel())[0, 1]), abs=1e-9)
    assert c.max_abs_diff == float(np.abs(e - h).max())
    assert c.identical is False  # one element differs, in the last block and chunk
    for name, x in (("model.embed_tokens.weight", e), ("lm_head.weight", h)):
        s = c.stats[name]
        assert (s["mean"], s["std"], s["min"], s["max"]) == pytest.approx((x.mean(), x.std(), x.min(), x.max()), rel=1e-9)
    spans = 2 * emb.nbytes
    assert c.bytes_read == spans == sum(f.bytes_read for f in opener.opened.values())
    # the structural path (one tensor) through the same chunks
    s = compare(loc["lm_head.weight"], None, engine=engine, block_bytes=block, workers=workers)
    assert s.stats["lm_head.weight"]["std"] == pytest.approx(h.std(), rel=1e-9)


def test_reads_without_preadv_are_the_same(offset_pair, monkeypatch):
    """Where os.preadv is missing, os.pread fills the block instead: same bytes, same counts, same numbers."""
    import ckptcount.verify.spans as spans

    folder, emb, _ = offset_pair
    got = []
    for preadv in (True, False):
        monkeypatch.setattr(spans, "_PREADV", preadv)
        monkeypatch.setattr(spans, "READ_CHUNK", 1000)  # several pread calls per piece
        loc, opener = _locate_all(folder)
        c = compare(loc["model.embed_tokens.weight"], loc["lm_head.weight"], engine=resolve("cpu", "numpy"), block_bytes=50_000)
        assert c.bytes_read == 2 * emb.nbytes == sum(f.bytes_read for f in opener.opened.values())
        got.append((c.pearson_r, c.max_abs_diff, c.identical))
    assert got[0] == got[1]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_identical_copy_across_chunks_and_threads(offset_pair, monkeypatch, tmp_path, backend):
    import ckptcount.verify.backends as backends

    monkeypatch.setattr(backends, "CHUNK", 1000)
    monkeypatch.setattr(backends, "TORCH_CHUNK", 1000)
    _, emb, _ = offset_pair
    folder = _write(tmp_path / "same", {"model.embed_tokens.weight": torch.from_numpy(emb),
                                       "lm_head.weight": torch.from_numpy(emb.copy())}, {"tie_word_embeddings": False})
    loc, _ = _locate_all(folder)
    c = compare(loc["model.embed_tokens.weight"], loc["lm_head.weight"], engine=resolve("cpu", backend), block_bytes=30_000, workers=2)
    assert (c.identical, c.max_abs_diff, c.pearson_r) == (True, 0.0, pytest.approx(1.0, abs=1e-12))


@pytest.mark.parametrize("budget", [8 * 2**20, 2**20])
def test_peak_memory_stays_within_the_block_budget(tmp_path, budget):
    """4096 x 512 F32 embedding and head (8 MiB each) under an 8 MiB budget (full-size chunks) and a 1 MiB one (chunks
    shrunk to the block), two threads: the peak of Python-tracked allocations (bytearrays and numpy arrays, both traced
    by tracemalloc) during the comparison stays within 1.2x the budget, and is not trivially small."""
    import tracemalloc

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((4096, 512), dtype=np.float32)
    folder = _write(tmp_path / "big", {"model.embed_tokens.weight": torch.from_numpy(emb),
                                      "lm_head.weight": torch.from_numpy(emb[::-1].copy())}, {"tie_word_embeddings": False})
    loc, _ = _locate_all(folder)
    engine = resolve("cpu", "numpy")
    tracemalloc.start()
    try:
        c = compare(loc["model.embed_tokens.weight"], loc["lm_head.weight"], engine=engine, block_bytes=budget, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.bytes_read == 2 * emb.nbytes
    assert 0.5 * budget < peak <= 1.2 * budget, peak / budget


@pytest.mark.parametrize("transposed", [False, True])
def test_blocks_rounded_up_by_the_engine_still_fit_the_budget(tmp_path, transposed):
    """torch's pinned-memory allocator rounds each block up to a power of two (on an H100, a remote comparison under
    the 64 MiB budget pinned 88 MiB). compare() sizes blocks by what the engine allocates: here a numpy engine that
    rounds the same way. The allocated blocks fit the budget, and the numbers equal those of exact-sized blocks."""
    from ckptcount.verify.backends import _Numpy

    class Rounding(_Numpy):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def host_bytes(self, n):
            return 1 << (n - 1).bit_length() if n else 0

        def host_buffer(self, n):
            self.sizes.append(self.host_bytes(n))
            return super().host_buffer(n)

        def work(self, n):
            self.sizes.append(self.work_bytes // self.chunk * n)  # float64 [2, n] and [n], uint32 [n]
            return super().work(n)

    rng = np.random.default_rng(5)
    emb = rng.standard_normal((3000, 96), dtype=np.float32)  # rows of 384 bytes: exact blocks are never powers of two
    head = emb + np.float32(0.01) * rng.standard_normal(emb.shape, dtype=np.float32)
    head = head.T.copy() if transposed else head
    folder = _write(tmp_path / "r", {"model.embed_tokens.weight": torch.from_numpy(emb),
                                    "lm_head.weight": torch.from_numpy(head)}, {"tie_word_embeddings": False})
    loc, _ = _locate_all(folder)
    a, b = loc["model.embed_tokens.weight"], loc["lm_head.weight"]
    budget = 600_000
    rounding = Rounding()
    got = compare(a, b, engine=rounding, block_bytes=budget, workers=2)
    plain = compare(a, b, engine=resolve("cpu", "numpy"), block_bytes=budget, workers=2)
    assert len(rounding.sizes) == 2 * (3 if transposed else 2) + 1  # two buffer sets, one computing thread
    assert 0.4 * budget < sum(rounding.sizes) <= budget  # blocks and work arrays, as allocated
    assert got.bytes_read == plain.bytes_read == 2 * emb.nbytes
    assert got.pearson_r == pytest.approx(plain.pearson_r, abs=1e-12)
    assert got.max_abs_diff == plain.max_abs_diff and got.identical is plain.identical is False


def test_short_file_is_a_one_line_not_verified_finding(ckpts, tmp_path):
    """The file shrank after its header was read: the read stops at the end of the file and says where."""
    import shutil

    folder = tmp_path / "short"
    shutil.copytree(ckpts["near-copy"][0], folder)
    report = audit(str(folder))
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: -(D * 4 + 100)])  # model.norm.weight (last) and 100 bytes of the one before
    out = verify_report(report, backend="numpy", device="cpu")
    (f,) = out.checkpoint.findings
    assert f.kind == "not-verified"
    assert "file ended after" in f.message and "\n" not in f.message
    assert out.verification.embedding_vs_head.skipped


def test_cpu_default_is_numpy_torch_on_request():
    """On the CPU numpy is the default (the faster path, see docs/verify.md); torch computes there only when asked."""
    e = resolve("cpu")
    assert (e.name, e.device, e.torch_missing) == ("numpy", "cpu", False)  # torch is installed here: nothing to say
    t = resolve("cpu", "torch")
    assert (t.name, t.device) == ("torch", "cpu")
    if not torch.cuda.is_available():
        assert resolve("auto").name == "numpy"


def test_auto_without_a_gpu_does_not_import_torch():
    """On Linux with no GPU device nodes, ``auto`` computes with numpy and never imports torch (2-3 s, ~250 MB)."""
    import subprocess

    from ckptcount.verify.backends import _gpu_possible

    if _gpu_possible():
        pytest.skip("a GPU may be present: auto imports torch to ask")
    code = "import sys; from ckptcount.verify.backends import resolve; e = resolve(); print(e.name, e.torch_missing, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["numpy", "False", "False"]  # torch is installed here (not missing), and was not imported


def test_a_deflated_pytorch_storage_is_not_read(tmp_path):
    """torch writes storages stored; a zip re-packed with deflate still counts, but its bytes are not read for a check."""
    import zipfile

    emb = torch.randn(V, D)
    src, dst = tmp_path / "src.bin", tmp_path / "m" / "pytorch_model.bin"
    torch.save({"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone()}, src)
    dst.parent.mkdir()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    (dst.parent / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    report, _ = _verify(dst.parent, backend="numpy", device="cpu")
    assert report.counts.parameters == 2 * V * D
    c = report.verification.embedding_vs_head
    assert c.skipped is not None and "is not a stored (uncompressed) zip entry of its size: not read" in c.skipped
