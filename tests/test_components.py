"""Role tables checked against the model's own module structure (an oracle independent of names).

For each parameter of an instantiated tiny model, the oracle asks torch which module owns it: a *Norm* class -> norm;
nn.Embedding -> embedding (token / position / other by the model's input-embedding and position tables); inside an
*Attention* module -> attention; inside an MLP / feed-forward / intermediate module -> mlp; the output embeddings ->
output head. ckptcount's by_component, read from the saved file, must agree exactly.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

from ckptcount import audit  # noqa: E402

SMALL = dict(vocab_size=96)
FAMILIES = {
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **SMALL)),
    "gpt-neo": lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]], max_position_embeddings=64, **SMALL)),
    "gpt-j": lambda: T.GPTJForCausalLM(T.GPTJConfig(n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64, **SMALL)),
    "gpt-neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **SMALL)),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **SMALL)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **SMALL)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **SMALL)),
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, **SMALL)),
    "bert-mlm": lambda: T.BertForMaskedLM(T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **SMALL)),
    "roberta-mlm": lambda: T.RobertaForMaskedLM(T.RobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **SMALL)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, **SMALL)),
    "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **SMALL)),
    "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(hidden_size=32, n_layer=2, n_head=2, **SMALL)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64, **SMALL)),
}
MLP_CLASSES = ("MLP", "Mlp", "FeedForward", "DenseReluDense", "DenseActDense", "Intermediate", "BertOutput", "RobertaOutput")


def oracle_components(model) -> dict[str, int]:
    token = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    owners: dict[int, list] = {}
    for mod_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owners[id(p)] = (mod_name, module)
    ancestors = dict(model.named_modules())
    out: dict[str, int] = {}
    for name, p in model.named_parameters():  # deduplicated: tied parameters once
        mod_name, module = owners[id(p)]
        chain = [type(ancestors[".".join(mod_name.split(".")[:i])]).__name__ for i in range(1, mod_name.count(".") + 2)]
        if id(p) in token:
            comp = "token_embedding"
        elif isinstance(module, torch.nn.Embedding):
            comp = "other_embedding" if "relative_attention_bias" in name or "token_type" in name else "position_embedding"
        elif "Norm" in type(module).__name__ or "LayerNorm" in type(module).__name__:
            comp = "norm"
        elif id(p) in head_ids or any("LMHead" in c or "MLMHead" in c or "PredictionHead" in c or "OnlyMLMHead" in c for c in chain):
            comp = "output_head"
        elif any("Attention" in c for c in chain):
            comp = "attention"
        elif any(any(m in c for m in MLP_CLASSES) for c in chain) or mod_name.rsplit(".", 1)[-1] in ("fc1", "fc2"):
            # OPT/BART keep their feed-forward Linears fc1/fc2 directly in the decoder layer
            comp = "mlp"
        else:
            comp = "other"
        out[comp] = out.get(comp, 0) + p.numel()
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_components_match_module_structure(tmp_path, family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    model.save_pretrained(tmp_path)
    got = {k: v.elements for k, v in audit(str(tmp_path)).counts.by_component.items() if v.elements}
    assert got == oracle_components(model)
