"""``ckptcount diff A B``: tiny real pairs built here (save_pretrained, torch.save, the gguf writer), each diff checked
against key, shape and dtype sets computed independently with safetensors.safe_open, torch.load(weights_only=True,
mmap=True), huggingface_hub.parse_local_safetensors_file_metadata and gguf.GGUFReader; parameter deltas against the
instantiated models; --content against torch's own arithmetic. Never against ckptcount's own output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount.api import audit, diff_targets
from ckptcount.cli import main
from ckptcount.diff.compare import compare
from ckptcount.diff.names import GGUF_TABLES, PREFIXES, align, to_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
V, D, FF = 64, 16, 32


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- oracles


def st_keys(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor of the folder's safetensors files, by safetensors.safe_open."""
    out = {}
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (tuple(s.get_shape()), s.get_dtype())
    return out


TORCH_TO_ST = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def bin_keys(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    sd = torch.load(path, weights_only=True, mmap=True)
    return {k: (tuple(v.shape), TORCH_TO_ST[v.dtype]) for k, v in sd.items()}


def oracle(ka: dict, kb: dict) -> dict[str, set[str]]:
    common = ka.keys() & kb.keys()
    return {
        "only_a": set(ka) - set(kb),
        "only_b": set(kb) - set(ka),
        "shape": {n for n in common if ka[n][0] != kb[n][0]},
        "dtype": {n for n in common if ka[n][1] != kb[n][1]},
    }


def ours(d) -> dict[str, set[str]]:
    """ckptcount's differences in the oracle's terms: stored names only on one side (a parameter, a buffer, or a
    name the other side holds as a tie alias), same names with another shape or dtype."""
    return {
        "only_a": {s.name for s in d.only_a + d.buffers_lost} | {t.side.name for t in d.tie_aliases if t.stored_in == "a"},
        "only_b": {s.name for s in d.only_b + d.buffers_gained} | {t.side.name for t in d.tie_aliases if t.stored_in == "b"},
        "shape": {c.a.name for c in d.changed if "shape" in c.changes},
        "dtype": {c.a.name for c in d.changed if "dtype" in c.changes},
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters once (torch deduplicates)


# ---------------------------------------------------------------- the pairs


def tiny_llama(layers: int = 2, tied: bool = True):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff-pairs")
    tied = tiny_llama()
    tied.save_pretrained(root / "tied")
    # an untied copy: same weights, the head a copy of the embedding, tie_word_embeddings false
    untied = tiny_llama(tied=False)
    state = {k: v.clone() for k, v in tied.state_dict().items()}
    state["lm_head.weight"] = tied.model.embed_tokens.weight.detach().clone()
    untied.load_state_dict(state)
    untied.save_pretrained(root / "untied")
    # a bf16 conversion
    bf16 = tiny_llama()
    bf16.load_state_dict(tied.state_dict())
    bf16.to(torch.bfloat16).save_pretrained(root / "bf16")
    # one extra layer
    deeper = tiny_llama(layers=3)
    deeper.save_pretrained(root / "deeper")
    # torch.save of the state dict (tied names share one storage) with its config, and nothing else
    (root / "bin").mkdir()
    torch.save(tied.state_dict(), root / "bin" / "pytorch_model.bin")
    tied.config.save_pretrained(root / "bin")
    # a fine-tune that moved one element
    tuned = tiny_llama()
    tuned.load_state_dict(tied.state_dict())
    with torch.no_grad():
        tuned.model.layers[1].mlp.up_proj.weight[3, 5] += 0.5
    tuned.save_pretrained(root / "tuned")
    return {"root": root, "tied": tied, "untied": untied, "bf16": bf16, "deeper": deeper, "tuned": tuned}


def test_untied_copy_loses_the_tie(pairs):
    root = pairs["root"]
    d = diff_targets(str(root / "tied"), str(root / "untied"))
    assert ours(d) == oracle(st_keys(root / "tied"), st_keys(root / "untied"))
    assert ours(d)["only_b"] == {"lm_head.weight"}
    # lm_head.weight is not "only in B": A holds it as its tie; what changed is the tie
    assert d.only_b == () and [t.side.name for t in d.tie_aliases] == ["lm_head.weight"]
    (lost,) = d.ties_lost
    assert set(lost.names) == {"model.embed_tokens.weight", "lm_head.weight"} and "tie_word_embeddings=true" in lost.evidence
    assert d.ties_gained == () and d.ties_b == ()
    assert d.count("parameters").delta == n_params(pairs["untied"]) - n_params(pairs["tied"]) == V * D
    assert d.differs
    r = run("diff", root / "tied", root / "untied")
    assert r.exit_code == 1 and r.stderr == ""
    assert "ties lost (in A, not in B): 1" in r.stdout
    assert r.stdout.rstrip().endswith("differs: 1 ties lost")


def test_bf16_conversion_is_dtype_only(pairs):
    root = pairs["root"]
    ka, kb = st_keys(root / "tied"), st_keys(root / "bf16")
    d = diff_targets(str(root / "tied"), str(root / "bf16"))
    assert ours(d) == oracle(ka, kb)
    assert ours(d)["dtype"] == set(ka) and all(c.changes == ("dtype",) for c in d.changed)
    assert d.count("parameters").delta == 0 and d.count("tensor_bytes").b * 2 == d.count("tensor_bytes").a
    r = run("diff", root / "tied", root / "bf16")
    assert r.exit_code == 1 and f"differs: {len(ka)} dtype changes" in r.stdout
    r = run("diff", root / "tied", root / "bf16", "--ignore", "dtype")
    assert r.exit_code == 0, r.stdout
    assert r.stdout.rstrip().endswith(f"no differences in what was compared (ignored: {len(ka)} dtype differences)")


def test_extra_layer(pairs):
    root = pairs["root"]
    ka, kb = st_keys(root / "tied"), st_keys(root / "deeper")
    d = diff_targets(str(root / "tied"), str(root / "deeper"))
    assert ours(d) == oracle(ka, kb)
    assert {s.name for s in d.only_b} == {k for k in kb if k.startswith("model.layers.2.")}
    assert d.count("parameters").delta == n_params(pairs["deeper"]) - n_params(pairs["tied"])
    assert d.changed == () and d.ties_lost == d.ties_gained == ()
    r = run("diff", root / "tied", root / "deeper", "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert {x["name"] for x in doc["only_b"]} == set(kb) - set(ka)
    assert doc["counts"]["parameters"]["delta"] == n_params(pairs["deeper"]) - n_params(pairs["tied"])


def test_bin_and_its_safetensors_conversion_compare_equal(pairs):
    root = pairs["root"]
    ka, kb = bin_keys(root / "bin" / "pytorch_model.bin"), st_keys(root / "tied")
    d = diff_targets(str(root / "bin"), str(root / "tied"))
    assert ours(d) == oracle(ka, kb)
    assert oracle(ka, kb)["only_a"] == {"lm_head.weight"}  # torch.save stores the tied head; save_pretrained does not
    # the .bin's tie is its shared storage, the safetensors one its config: the same tie
    assert not d.differs and d.ties_lost == d.ties_gained == ()
    (alias,) = d.tie_aliases
    assert (alias.stored_in, alias.side.name, alias.alias_of) == ("a", "lm_head.weight", "model.embed_tokens.weight")
    assert d.format_a == "pytorch" and d.format_b == "safetensors"
    r = run("diff", root / "bin", root / "tied")
    assert r.exit_code == 0 and r.stderr == ""
    assert "stored on one side, a tie alias on the other (not a difference): 1" in r.stdout
    # and by content: every tensor both hold, byte for byte (the .bin read from its zip storages)
    r = run("diff", root / "bin", root / "tied", "--content", "--format", "json")
    assert r.exit_code == 0, r.stdout
    c = json.loads(r.stdout)["content"]
    assert c["compared"] == len(ka.keys() & kb.keys()) and c["differ"] == 0 and c["skipped"] == 0
    sd = torch.load(root / "bin" / "pytorch_model.bin", weights_only=True)
    assert c["bytes_read"] == 2 * sum(sd[k].numel() * sd[k].element_size() for k in ka.keys() & kb.keys())


def test_content_finds_the_element_a_fine_tune_moved(pairs):
    root = pairs["root"]
    a = pairs["tied"].state_dict()
    b = pairs["tuned"].state_dict()
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert moved == ["model.layers.1.mlp.up_proj.weight"]
    delta = (a[moved[0]].double() - b[moved[0]].double()).flatten()  # exact: the stored values' difference
    first = int(torch.nonzero(delta)[0])
    d = diff_targets(str(root / "tied"), str(root / "tuned"))
    assert not d.differs  # the headers are the same
    d = diff_targets(str(root / "tied"), str(root / "tuned"), content=True)
    assert d.differs
    (t,) = d.content.differ
    assert t.a == moved[0] and t.first_difference == first == 3 * D + 5
    assert t.max_abs_diff == float(delta.abs().max())
    assert t.sha256_a != t.sha256_b and len(d.content.tensors) == len(a) - 1  # lm_head: tied, not stored
    r = run("diff", root / "tied", root / "tuned", "--content")
    assert r.exit_code == 1
    assert f"  {moved[0]}  first difference at element {first}, max |diff| {float(delta.abs().max()):.3g}" in r.stdout
    # a budget too small for the moved tensor: it is not compared, and nothing else differs
    r = run("diff", root / "tied", root / "tuned", "--content", "--budget", "1000")
    assert r.exit_code == 0 and "over the --budget" in r.stdout


def test_content_of_a_bf16_conversion_is_its_rounding(pairs):
    root = pairs["root"]
    d = diff_targets(str(root / "tied"), str(root / "bf16"), ignore={"dtype"}, content=True)
    a = pairs["tied"].state_dict()
    by_name = {t.a: t for t in d.content.tensors}
    for name, t in by_name.items():
        expect = float((a[name].double() - a[name].to(torch.bfloat16).double()).abs().max())
        assert t.max_abs_diff == pytest.approx(expect, rel=0, abs=0), name
        assert t.equal is (expect == 0.0), name
    assert d.content.differ  # rounding moved values, so --content reports them even with --ignore dtype


# ---------------------------------------------------------------- GGUF against its safetensors source

gguf = pytest.importorskip("gguf")


def _arch_models():
    """(ckptcount arch, gguf MODEL_ARCH, a tiny transformers model of that family on the meta device)."""
    small = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    out = [
        ("llama", gguf.MODEL_ARCH.LLAMA, transformers.LlamaForCausalLM, transformers.LlamaConfig(**small)),
        ("mistral", gguf.MODEL_ARCH.LLAMA, transformers.MistralForCausalLM, transformers.MistralConfig(**small)),  # llama.cpp converts mistral as llama
        ("qwen2", gguf.MODEL_ARCH.QWEN2, transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**small)),
        ("qwen3", gguf.MODEL_ARCH.QWEN3, transformers.Qwen3ForCausalLM, transformers.Qwen3Config(head_dim=8, **small)),
        ("gpt2", gguf.MODEL_ARCH.GPT2, transformers.GPT2LMHeadModel, transformers.GPT2Config(n_layer=2, n_embd=D, n_head=2, vocab_size=V, n_positions=32, tie_word_embeddings=False)),
    ]
    for arch, gguf_arch, cls, config in out:
        with torch.device("meta"):
            model = cls(config)
        yield arch, gguf_arch, model


def test_gguf_table_agrees_with_gguf_py():
    """Every name a tiny model of each mapped family stores, as the base model (no prefix) and as *ForCausalLM
    (model. / transformer.), is renamed exactly as gguf-py's own tensor_mapping renames it; and every row of the
    table is reached."""
    used = set()
    for arch, gguf_arch, model in _arch_models():
        theirs = gguf.get_tensor_name_map(gguf_arch, 2)
        names = list(model.state_dict())
        assert names
        bare = [n.split(".", 1)[1] if n.split(".", 1)[0] in PREFIXES else n for n in names]
        for name in names + bare:
            expect = theirs.get_name(name, try_suffixes=(".weight", ".bias"))
            assert expect is not None, (arch, name)  # every name of these families has a GGUF name...
            assert to_gguf(name, arch) == expect, (arch, name)  # ...and it is ours
            used.add((arch, expect.rsplit(".", 1)[0].replace(".0.", ".{bid}.").replace(".1.", ".{bid}.")))
    rows = {(arch, g) for arch, table in GGUF_TABLES.items() for g, _ in table}
    assert rows == used


def write_gguf(path: Path, state: dict, arch=None):
    """A GGUF written by the gguf package's writer from a state dict, each name renamed by gguf-py's own map."""
    arch = arch or gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, 8)
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(2)
    for k, v in state.items():
        new = names.get_name(k, try_suffixes=(".weight", ".bias"))
        assert new is not None, k
        w.add_tensor(new, v.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_against_its_safetensors_source(pairs, tmp_path):
    root = pairs["root"]
    src = st_keys(root / "tied")
    with safe_open(str(root / "tied" / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    write_gguf(tmp_path / "tiny.gguf", state)
    theirs = {t.name: (tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name) for t in gguf.GGUFReader(tmp_path / "tiny.gguf").tensors}
    rename = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 8)
    assert {rename.get_name(k, try_suffixes=(".weight", ".bias")) for k in src} == set(theirs)
    d = diff_targets(str(root / "tied"), str(tmp_path / "tiny.gguf"))
    assert "GGUF renaming" in d.mapping and "llama rows" in d.mapping
    assert (d.renamed_a, d.renamed_b) == (len(src), 0)  # every stored name of the transformers side
    assert d.matched == len(src) == len(theirs)
    assert not d.differs, d
    # the tie: config + absent head on one side, absent output.weight on the other
    assert d.ties_lost == d.ties_gained == () and len(d.ties_a) == len(d.ties_b) == 1
    r = run("diff", root / "tied", tmp_path / "tiny.gguf", "--content")
    assert r.exit_code == 0, r.stdout
    assert f"content: {len(src)} tensors compared, 0 differ, 0 not compared" in r.stdout


def test_gguf_in_f16_differs_by_dtype_only(pairs, tmp_path):
    root = pairs["root"]
    with safe_open(str(root / "tied" / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 8)
    w = gguf.GGUFWriter(tmp_path / "f16.gguf", "llama")
    for k, v in state.items():  # 2-D weights in F16, norms in F32, as llama.cpp's converter writes --outtype f16
        arr = v.float().numpy()
        w.add_tensor(names.get_name(k, try_suffixes=(".weight",)), arr.astype("float16") if arr.ndim == 2 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    theirs = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "f16.gguf").tensors}
    d = diff_targets(str(root / "tied"), str(tmp_path / "f16.gguf"))
    assert {c.b.name for c in d.changed} == {n for n, t in theirs.items() if t == "F16"}
    assert all(c.changes == ("dtype",) for c in d.changed)
    assert not diff_targets(str(root / "tied"), str(tmp_path / "f16.gguf"), ignore={"dtype"}).differs


# ---------------------------------------------------------------- the GPT-2 fixtures (header-only files)


def hf_keys(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from huggingface_hub import parse_local_safetensors_file_metadata

    meta = parse_local_safetensors_file_metadata(folder / "model.safetensors")
    return {k: (tuple(t.shape), t.dtype) for k, t in meta.tensors.items()}


def test_gpt2_against_gpt2_medium():
    ka, kb = hf_keys(FIXTURES / "gpt2"), hf_keys(FIXTURES / "gpt2-medium")
    d = compare(audit(str(FIXTURES / "gpt2")), audit(str(FIXTURES / "gpt2-medium")))
    assert ours(d) == oracle(ka, kb)
    masks = [s.name for s in d.buffers_gained]
    assert masks == [f"h.{i}.attn.bias" for i in range(12, 24)] and {s.reason for s in d.buffers_gained} == {"causal mask"}
    assert dict(d.buffers_a) == {"causal mask": 12} and dict(d.buffers_b) == {"causal mask": 24}
    shapes = {c.a.name: (c.a.shape, c.b.shape) for c in d.changed}
    assert shapes == {n: (ka[n][0], kb[n][0]) for n in oracle(ka, kb)["shape"]}
    assert shapes["wte.weight"] == ((50257, 768), (50257, 1024))
    # FACTS.md: 124,439,808 and 354,823,168 parameters
    assert (d.count("parameters").a, d.count("parameters").b) == (124_439_808, 354_823_168)
    r = run("diff", FIXTURES / "gpt2", FIXTURES / "gpt2-medium")
    assert r.exit_code == 1 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert "  h.{12..23}.attn.bias  [1, 1, 1024, 1024] F32 (causal mask)" in lines
    assert "  wte.weight  [50257, 768] -> [50257, 1024]" in lines
    assert next(ln for ln in lines if ln.strip().startswith("buffers ")).split()[1:] == ["12", "causal", "mask", "24", "causal", "mask", "changed"]
    assert lines[-1] == "differs: 144 parameters only in B, 12 buffers gained, 148 shape changes"
    assert len(lines) < 60  # one screen
    r = run("diff", FIXTURES / "gpt2", FIXTURES / "gpt2-medium", "--ignore-buffers")
    assert r.exit_code == 1 and r.stdout.splitlines()[-1] == "differs: 144 parameters only in B, 148 shape changes (ignored: 12 buffers differences)"


def test_same_checkpoint_exits_0_and_never_imports_numpy_or_torch(tmp_path):
    code = (
        "import sys\n"
        "from ckptcount.cli import main\n"
        "try:\n    main(['diff', sys.argv[1], sys.argv[2], '--format', 'json'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, 'imported'\n"
        "sys.exit(code)\n"
    )
    gpt2 = str(FIXTURES / "gpt2")
    p = subprocess.run([sys.executable, "-c", code, gpt2, gpt2], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema_version"] == 1 and doc["differs"] is False
    assert list(doc)[:4] == ["schema_version", "a", "b", "differs"]
    assert doc["counts"]["parameters"] == {"a": 124_439_808, "b": 124_439_808, "delta": 0}


def test_header_only_fixture_with_content_says_so():
    r = run("diff", FIXTURES / "gpt2", FIXTURES / "gpt2", "--content")
    assert r.exit_code == 0
    assert "content: 0 tensors compared, 0 differ, 160 not compared; 0 bytes read" in r.stdout
    assert "  not compared: 160 (header only: no tensor data)" in r.stdout


# ---------------------------------------------------------------- names: the prefix rule


def test_prefix_is_matched_and_said(tmp_path):
    """GPT2LMHeadModel names its tensors transformer.*; the Hub's gpt2 file has no prefix (FACTS.md)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "lm")
    transformers.GPT2Model(config).save_pretrained(tmp_path / "base")
    ka, kb = st_keys(tmp_path / "lm"), st_keys(tmp_path / "base")
    assert all(k.startswith("transformer.") for k in ka) and not any(k.startswith("transformer.") for k in kb)
    d = diff_targets(str(tmp_path / "lm"), str(tmp_path / "base"))
    assert d.mapping == "matched with the prefix 'transformer.' removed from A's names"
    stripped = {k[len("transformer."):]: v for k, v in ka.items()}
    assert ours(d)["only_a"] == {"transformer." + k for k in oracle(stripped, kb)["only_a"]} | {t.side.name for t in d.tie_aliases}
    assert d.matched == len(stripped.keys() & kb.keys()) == len(kb)
    assert d.changed == ()
    # the LM model ties its head to wte (config); the base model has no head to tie
    assert [set(t.names) for t in d.ties_lost] == [{"transformer.wte.weight", "lm_head.weight"}]


def test_align_keeps_names_that_would_collide():
    al = align({"model.norm.weight", "norm.weight", "model.x.weight"}, {"norm.weight", "x.weight"})
    assert al.key_a("model.x.weight") == "x.weight"
    assert al.key_a("model.norm.weight") == "model.norm.weight"  # norm.weight is stored as itself on that side


# ---------------------------------------------------------------- CLI: dispatch, errors, exit 2


def test_a_local_path_named_diff_is_still_counted(tmp_path, monkeypatch):
    shutil.copytree(FIXTURES / "gpt2", tmp_path / "diff")
    monkeypatch.chdir(tmp_path)
    for argv in (["./diff"], ["--", "diff"]):
        r = run(*argv)
        assert r.exit_code == 0, (argv, r.output)
        assert "124,439,808" in r.stdout
    r = run("--format", "json", "diff")  # diff after an option: a target, when it exists
    assert r.exit_code == 0 and json.loads(r.stdout)["targets"][0]["parameters"] == 124_439_808


def test_errors_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("diff", FIXTURES / "gpt2", tmp_path / "missing")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "missing" in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    r = run("diff", bad, FIXTURES / "gpt2")
    assert r.exit_code == 2 and "bad.safetensors" in r.stderr and "Traceback" not in r.output
    assert run("diff", FIXTURES / "gpt2").exit_code == 2  # one target: usage
    assert run("diff", FIXTURES / "gpt2", FIXTURES / "gpt2", "--budget", "1GB").exit_code == 2  # without --content
    assert run("diff", FIXTURES / "gpt2", FIXTURES / "gpt2", "--ignore", "names").exit_code == 2
    r = run("--format", "json", "diff", "x", "y")  # no local path named diff: say where diff goes
    assert r.exit_code == 2 and "ckptcount diff A B" in r.stderr


def test_python_m_ckptcount_diff(tmp_path):
    gpt2 = str(FIXTURES / "gpt2")
    p = subprocess.run([sys.executable, "-m", "ckptcount", "diff", gpt2, str(FIXTURES / "gpt2-medium")], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 1 and p.stdout.rstrip().endswith("148 shape changes")


# ---------------------------------------------------------------- over the stand-in Hub


def test_diff_over_the_stand_in_hub(pairs, stand_in_hub):
    from hubserver import load_dir

    root = pairs["root"]
    stand_in_hub.add("org/tied", load_dir(root / "tied"))
    stand_in_hub.add("org/untied", load_dir(root / "untied"))
    r = run("diff", "org/tied", "org/untied", "--format", "json", "--content")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert [set(t["names"]) for t in doc["ties_lost"]] == [{"model.embed_tokens.weight", "lm_head.weight"}]
    assert doc["only_a"] == doc["only_b"] == doc["changed"] == []
    ka = st_keys(root / "tied")
    c = doc["content"]  # read by HTTP range requests: the untied copy holds the same bytes
    assert c["compared"] == len(ka) and c["differ"] == 0
    state = pairs["tied"].state_dict()
    assert c["bytes_read"] == 2 * sum(state[k].numel() * state[k].element_size() for k in ka)
    assert any(x.range and x.status == 206 for x in stand_in_hub.requests("cdn"))
