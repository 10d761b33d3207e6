"""Architectures whose persistent buffers or untied heads names alone cannot tell (the sweep's findings,
scripts/sweep_transformers.py), saved by transformers and counted against the instantiated model.

Oracles: parameters = ``sum(p.numel() for p in model.parameters())``; buffer elements = the persistent buffers of
``model.state_dict()``; biases = 1-D parameters whose name ends in "bias"; transformers' non-embedding count =
``model.num_parameters(exclude_embeddings=True)``. Configs are the sweep's tiny ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ckptcount import audit  # noqa: E402
from ckptcount.analysis import transformers_table  # noqa: E402
from ckptcount.analysis.config import tie_setting  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from sweep_transformers import tiny_config  # noqa: E402

CASES = {
    # model type: (class, what ckptcount needs to know)
    "ibert": ("IBertForMaskedLM", "table: 143 quantization buffers (weight_integer, x_min, ...)"),
    "minimax": ("MiniMaxForCausalLM", "table: slope_rate and decay tables"),
    "gemma4_text": ("Gemma4ForCausalLM", "table: layer_scalar"),
    "apertus": ("ApertusForCausalLM", "table: 0-D act_fn.beta / act_fn.eps"),
    "deepseek_v4": ("DeepseekV4ForCausalLM", "table: router correction saved as ffn.gate.bias"),
    "encodec": ("EncodecModel", "row: EMA codebook statistics; table: codebook.embed"),
    "hy_v3": ("HYV3ForCausalLM", "row: router correction saved as expert_bias"),
    "bart": ("BartForConditionalGeneration", "row: final_logits_bias"),
    "bigbird_pegasus": ("BigBirdPegasusForCausalLM", "table: the class never ties its head"),
    "vit": ("ViTModel", "table: no nn.Embedding (position_embeddings is a bare nn.Parameter)"),
    "clip": ("CLIPModel", "table: token_embedding / position_embedding are nn.Embedding, patch_embedding is not"),
    "mistral_large4_text": ("MistralLarge4TextModel", "table: softmax_scaling.bias is saved as ssmax_scaling.b"),
    "mimo_v2_flash": ("MiMoV2FlashForCausalLM", "table: the sinks are saved as attention_sink_bias, not a bias"),
}


def _oracle(model) -> dict:
    state = model.state_dict()
    params = dict(model.named_parameters())
    persistent = {n: b for n, b in model.named_buffers() if n in state}
    biases = [p for n, p in params.items() if p.dim() == 1 and n.endswith("bias")]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "buffer_elements": sum(b.numel() for b in persistent.values()),
        "bias_elements": sum(p.numel() for p in biases),
        "non_embedding": model.num_parameters(exclude_embeddings=True),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for model_type, (cls_name, _) in CASES.items():
        torch.manual_seed(0)
        model = getattr(transformers, cls_name)(tiny_config(model_type)).float().eval()
        d = tmp_path_factory.mktemp(model_type)
        model.save_pretrained(d)
        out[model_type] = (d, _oracle(model))
        del model
    return out


@pytest.mark.parametrize("model_type", list(CASES))
def test_counts_match_instantiated_model(saved, model_type):
    d, oracle = saved[model_type]
    c = audit(str(d)).counts
    assert c.parameters == oracle["parameters"]
    assert c.buffer_elements == oracle["buffer_elements"]
    assert c.biases.elements == oracle["bias_elements"]
    assert c.non_embedding["transformers"] == oracle["non_embedding"]


def test_table_buffers_are_named_for_their_model_type(saved):
    d, _ = saved["ibert"]
    r = audit(str(d))
    (group,) = r.counts.buffers
    assert group.reason == "persistent buffer (transformers ibert)" and group.tensors == 143


def test_generic_rows_need_no_config(saved, tmp_path):
    """final_logits_bias is a buffer by its name alone: without config.json too."""
    d, oracle = saved["bart"]
    (tmp_path / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    r = audit(str(tmp_path))
    assert {b.reason for b in r.counts.buffers} == {"final logits bias"}
    assert r.counts.buffer_elements == oracle["buffer_elements"]


def test_table_applies_only_to_its_model_type(saved, tmp_path):
    """The same names under another model type are not looked up in ibert's entries."""
    d, oracle = saved["ibert"]
    (tmp_path / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert audit(str(tmp_path)).counts.parameters > oracle["parameters"]


def test_untied_head_class_overrides_the_config(saved):
    d, _ = saved["bigbird_pegasus"]
    config = json.loads((d / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    tied, how = tie_setting(config)
    assert tied is False and "BigBirdPegasusForCausalLM never ties" in how
    assert not [g for g in audit(str(d)).ties if g.counted_once]


def test_matcher_prefixes_both_ways():
    match = transformers_table.matcher(["model.layers.0.layer_scalar"])
    assert match("model.layers.0.layer_scalar")
    assert match("language_model.model.layers.0.layer_scalar")  # the file has a prefix the entry lacks
    assert match("layers.0.layer_scalar")  # the file lacks one (a base model's save)
    assert not match("layer_scalar")  # one part is never enough
    assert not match("model.layers.0.layer_scalars")


def test_table_records_its_transformers_version():
    t = transformers_table.table()
    assert t["transformers"] and t["buffers"]["ibert"] and "BigBirdPegasusForCausalLM" in t["untied_heads"]


@pytest.mark.parametrize(
    "cls_name, model_type, head",
    [
        ("WhisperForCausalLM", "whisper", "proj_out.weight"),
        ("BioGptForCausalLM", "biogpt", "output_projection.weight"),
        ("OpenAIGPTLMHeadModel", "openai-gpt", "lm_head.weight"),  # tokens_embed: a token embedding by name
    ],
)
def test_tied_head_not_stored_is_named_as_the_model_names_it(tmp_path, cls_name, model_type, head):
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(tiny_config(model_type)).eval()
    model.save_pretrained(tmp_path)
    shared = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), set()).add(n)
    (oracle,) = [g for g in shared.values() if len(g) > 1]
    r = audit(str(tmp_path))
    assert head in oracle
    assert [set(g.names) for g in r.ties] == [oracle]
    assert r.counts.parameters == sum(p.numel() for p in model.parameters())


def test_hostile_name_of_many_parts_is_matched_in_linear_time(tmp_path):
    """Matching tries only suffixes as long as the longest entry: a 200,000-part name is not 200,000 long joins."""
    from safetensors.torch import save_file

    name = ".".join(["x"] * 200_000) + ".ibert.embeddings.word_embeddings.weight_integer"
    save_file({name: torch.zeros(2, 2), "w.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ibert"}))
    r = audit(str(tmp_path))
    assert r.counts.parameters == 4 and r.counts.buffer_elements == 4  # ibert's weight_integer, behind the prefix
