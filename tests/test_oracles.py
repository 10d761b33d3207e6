"""Real checkpoints written by transformers and safetensors, counted by ckptcount, checked against independent oracles:

* parameters == sum(p.numel() for p in model.parameters()) of the instantiated model (tied weights counted once);
* biases == 1-D parameters whose name ends in "bias", over model.named_parameters();
* stored elements == huggingface_hub.parse_local_safetensors_file_metadata;
* tie groups == the names that share one Parameter (as far as the file and config can show);
* transformers' own non-embedding count, model.num_parameters(exclude_embeddings=True).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from huggingface_hub import parse_local_safetensors_file_metadata  # noqa: E402
from safetensors.torch import save_model  # noqa: E402

from ckptcount import audit  # noqa: E402

T = transformers


def _llama(tied: bool, **kw):
    return T.LlamaForCausalLM(
        T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=96, tie_word_embeddings=tied, **kw)
    )


MODELS = {
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64)),
    "llama-tied": lambda: _llama(True),
    "llama-untied": lambda: _llama(False),
    "qwen2": lambda: T.Qwen2ForCausalLM(
        T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=96, tie_word_embeddings=False)
    ),
    "bert-mlm": lambda: T.BertForMaskedLM(
        T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=96)
    ),
    "t5": lambda: T.T5ForConditionalGeneration(
        T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=96)
    ),
    "gpt-neox": lambda: T.GPTNeoXForCausalLM(
        T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=96)
    ),
    "llama-bf16": lambda: _llama(True).to(torch.bfloat16),
    "gpt2-f16": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64)).half(),
}


def _shared_groups(model) -> set[frozenset[str]]:
    """Names that share one Parameter object: the oracle for tie groups."""
    by_id: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), set()).add(name)
    return {frozenset(v) for v in by_id.values() if len(v) > 1}


def _oracle(model) -> dict:
    named = dict(model.named_parameters())  # deduplicated: tied names once
    return dict(
        params=sum(p.numel() for p in model.parameters()),
        bias_tensors=sum(1 for n, p in named.items() if n.endswith("bias") and p.dim() == 1),
        bias_elements=sum(p.numel() for n, p in named.items() if n.endswith("bias") and p.dim() == 1),
        groups=_shared_groups(model),
        non_embedding=model.num_parameters(exclude_embeddings=True),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model saved twice: transformers save_pretrained, and safetensors.torch.save_model (+ config.json)."""
    torch.manual_seed(0)
    out = {}
    for name, make in MODELS.items():
        model = make().eval()
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d / "pretrained")
        (d / "save_model").mkdir()
        save_model(model, str(d / "save_model" / "model.safetensors"))
        (d / "save_model" / "config.json").write_text((d / "pretrained" / "config.json").read_text())
        out[name] = (d, _oracle(model))
    return out


@pytest.mark.parametrize("how", ["pretrained", "save_model"])
@pytest.mark.parametrize("name", list(MODELS))
def test_counts_match_instantiated_model(saved, name, how):
    d, oracle = saved[name]
    target = d / how
    r = audit(str(target))
    c = r.counts
    assert c.parameters == oracle["params"]
    assert (c.biases.tensors, c.biases.elements) == (oracle["bias_tensors"], oracle["bias_elements"])
    assert c.weights.elements == oracle["params"] - oracle["bias_elements"]
    hub = parse_local_safetensors_file_metadata(target / "model.safetensors")
    assert c.stored_elements == sum(hub.parameter_count.values())
    assert c.non_embedding["transformers"] == oracle["non_embedding"]
    found = {frozenset(g.names) for g in r.ties if g.counted_once}
    assert found == oracle["groups"]


@pytest.mark.parametrize("name", ["gpt2", "llama-tied", "t5", "bert-mlm"])
def test_save_model_alias_evidence(saved, name):
    d, _ = saved[name]
    r = audit(str(d / "save_model"))
    assert r.ties and all("metadata alias" in g.evidence for g in r.ties)


def test_save_model_keeps_head_name_but_counts_it_as_embedding(saved):
    """save_model keeps 'lm_head.weight' (lexicographically first) for GPT-2: still the token embedding."""
    d, _ = saved["gpt2"]
    r = audit(str(d / "save_model"))
    stored = {t.name for t in r.checkpoint.tensors}
    assert "lm_head.weight" in stored and "transformer.wte.weight" not in stored
    assert r.counts.by_component["token_embedding"].elements == 96 * 32
    assert r.counts.by_component["output_head"].elements == 0


def test_qwen3_style_duplicate_head_counted_once(saved, tmp_path):
    """Config says tied AND lm_head.weight is stored: the loader ties them, so it is one parameter."""
    from safetensors.torch import load_file, save_file

    d, oracle = saved["llama-tied"]
    tensors = load_file(d / "pretrained" / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((d / "pretrained" / "config.json").read_text())
    r = audit(str(tmp_path))
    assert r.counts.parameters == oracle["params"]
    assert r.counts.stored_elements == oracle["params"] + 96 * 32
    (g,) = r.ties
    assert set(g.stored) == {"lm_head.weight", "model.embed_tokens.weight"} and "duplicate" in g.evidence


def test_no_config_equal_shapes_is_only_a_candidate(saved, tmp_path):
    d, oracle = saved["llama-untied"]
    (tmp_path / "model.safetensors").write_bytes((d / "pretrained" / "model.safetensors").read_bytes())
    r = audit(str(tmp_path / "model.safetensors"))
    (g,) = r.ties
    assert not g.counted_once and g.evidence.startswith("candidate")
    assert r.counts.parameters == oracle["params"]


def test_text_config_tie_setting(saved, tmp_path):
    d, oracle = saved["llama-tied"]
    cfg = json.loads((d / "pretrained" / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    wrapped = {"architectures": cfg["architectures"], "text_config": {**cfg, "tie_word_embeddings": True}}
    (tmp_path / "config.json").write_text(json.dumps(wrapped))
    (tmp_path / "model.safetensors").write_bytes((d / "pretrained" / "model.safetensors").read_bytes())
    (g,) = audit(str(tmp_path)).ties
    assert "text_config.tie_word_embeddings=true" in g.evidence


def test_sharded_save_pretrained(tmp_path):
    torch.manual_seed(0)
    model = _llama(False)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    r = audit(str(tmp_path))
    assert r.counts.parameters == sum(p.numel() for p in model.parameters())
    assert r.counts.parameters == index["metadata"]["total_parameters"]
    assert sorted(f.path for f in r.checkpoint.files) == shards
    assert r.checkpoint.findings == ()
    stored = sum(sum(parse_local_safetensors_file_metadata(tmp_path / s).parameter_count.values()) for s in shards)
    assert r.counts.stored_elements == stored
