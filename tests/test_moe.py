"""Mixture of experts: total == sum(p.numel()) of tiny transformers models; active computed from the architecture."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = T = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from ckptcount.api import audit  # noqa: E402
from ckptcount.analysis.moe import expert_kind  # noqa: E402

H, I, E, K, L, VOCAB = 16, 24, 4, 2, 2, 64


def mixtral():
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=E, num_experts_per_tok=K,
    )
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(cfg)


def mixtral_active(total: int) -> int:
    """Each Mixtral expert is w1, w3 [I, H] and w2 [H, I], no biases; a token uses K of E experts in each layer."""
    return total - L * (E - K) * 3 * H * I


def test_mixtral_save_pretrained(tmp_path):
    model = mixtral()
    model.save_pretrained(tmp_path)  # transformers 5 writes the per-expert layout: experts.N.w1.weight
    report = audit(str(tmp_path))
    total = sum(p.numel() for p in model.parameters())
    m = report.moe
    assert m["total"] == report.counts.parameters == total
    assert m["active"] == mixtral_active(total)
    assert (m["experts"], m["experts_per_token"], m["moe_layers"], m["layout"]) == (E, K, L, "per-expert")
    assert m["routed_expert_parameters"] == L * E * 3 * H * I
    assert f"= {m['active']:,}" in m["formula"] and "num_local_experts=4" in m["evidence"]


def test_mixtral_fused_layout(tmp_path):
    """The in-memory transformers 5 layout (experts.gate_up_proj [E, 2I, H]) written as is."""
    model = mixtral()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    report = audit(str(tmp_path))
    total = sum(p.numel() for p in model.parameters())
    assert report.moe["total"] == total and report.moe["active"] == mixtral_active(total)
    assert report.moe["layout"] == "fused"


def test_qwen2_moe_with_shared_expert(tmp_path):
    moe_i, shared_i = 8, 20
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=I, moe_intermediate_size=moe_i,
        shared_expert_intermediate_size=shared_i, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        num_experts=E, num_experts_per_tok=K, mlp_only_layers=[1],  # layer 1 is a dense MLP
    )
    torch.manual_seed(0)
    model = transformers.Qwen2MoeForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    report = audit(str(tmp_path))
    total = sum(p.numel() for p in model.parameters())
    moe_layers = 2
    assert report.moe["total"] == total
    # shared expert and its gate run for every token; only routed experts (gate, up, down of moe_i) are skipped
    assert report.moe["active"] == total - moe_layers * (E - K) * 3 * H * moe_i
    assert report.moe["moe_layers"] == moe_layers


def test_gguf_moe(tmp_path):
    gguf = pytest.importorskip("gguf")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_gguf import D, FF, write_model

    (path,) = write_model(tmp_path / "moe.gguf", tied=True, experts=8, used=2)
    report = audit(str(path))
    total = sum(t.n_elements for t in gguf.GGUFReader(path).tensors)
    assert report.moe["total"] == total
    assert report.moe["active"] == total - 2 * (8 - 2) * 3 * D * FF
    assert "expert_count=8" in report.moe["evidence"] and report.moe["layout"] == "gguf"


def test_unknown_experts_per_token(tmp_path):
    model = mixtral()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["num_experts_per_tok"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    m = audit(str(tmp_path)).moe
    assert m["active"] is None and m["formula"] is None and "experts per token unknown" in m["notes"][0]


def test_dense_model_has_no_moe(fixtures_dir):
    assert audit(str(fixtures_dir / "gpt2")).moe is None


@pytest.mark.parametrize(
    "name,kind",
    [
        ("model.layers.0.block_sparse_moe.experts.7.w1.weight", "per-expert"),
        ("model.layers.3.mlp.experts.12.down_proj.weight", "per-expert"),
        ("model.layers.0.mlp.experts.gate_up_proj", "fused"),
        ("model.layers.0.mlp.experts.down_proj_blocks", "fused"),
        ("blk.0.ffn_up_exps.weight", "gguf"),
        ("model.layers.0.mlp.shared_expert.up_proj.weight", None),
        ("model.layers.0.mlp.shared_experts.up_proj.weight", None),
        ("blk.0.ffn_up_shexp.weight", None),
        ("model.layers.0.mlp.gate.weight", None),
        ("blk.0.ffn_gate_inp.weight", None),
    ],
)
def test_expert_kind(name, kind):
    assert expert_kind(name) == kind


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
            vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8, n_group=1, topk_group=1)), id="deepseek-v3: e_score_correction_bias is a buffer"),
        pytest.param(lambda: T.Ernie4_5_MoeForCausalLM(T.Ernie4_5_MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, moe_num_experts=4, moe_k=2, moe_layer_start_index=1)),
            id="ernie-4.5-moe: e_score_correction_bias is a parameter"),
    ],
)
def test_router_score_correction_buffer_or_parameter(tmp_path, make):
    """The same tensor name is an nn.Buffer in DeepSeek-V3 and an nn.Parameter in Ernie 4.5 MoE: model_type decides."""
    torch.manual_seed(0)
    model = make()
    model.save_pretrained(tmp_path)
    report = audit(str(tmp_path))
    total = sum(p.numel() for p in model.parameters())
    assert report.counts.parameters == total
    buffers = {n for n, _ in model.named_buffers() if n.endswith("e_score_correction_bias")}
    assert {n for b in report.counts.buffers for n in b.names if n.endswith("e_score_correction_bias")} == buffers
    e, k = (model.config.n_routed_experts, model.config.num_experts_per_tok) if hasattr(model.config, "n_routed_experts") else (model.config.moe_num_experts, model.config.moe_k)
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n and "shared" not in n)
    assert report.moe["active"] == total - routed * (e - k) // e


def test_summary_from_classify_candidates_is_the_summary_from_every_record():
    """moe.summarize reads only classify's expert candidates, and skips the stored-twice and tied checks when no name
    is stored twice and nothing is tied; on any mix of experts, shared experts, routers, stored-twice names and ties
    that gives the same summary as the scan of every classified record."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ckptcount.analysis.classify import classify_all
    from ckptcount.analysis.count import count
    from ckptcount.analysis.moe import summarize
    from ckptcount.records import Checkpoint, TensorRecord, TieGroup

    stems = st.sampled_from(["mlp.experts.{e}.gate_proj", "mlp.experts.{e}.down_proj", "mlp.shared_experts.up_proj", "mlp.gate",
                             "block_sparse_moe.experts.{e}.w1", "mlp.experts.gate_up_proj", "ffn_up_exps", "self_attn.q_proj"])
    entry = st.tuples(st.integers(0, 2), stems, st.integers(0, 5), st.sampled_from(["weight", "bias", "weight_scale_inv"]),
                      st.sampled_from(["BF16", "F32", "I64"]), st.lists(st.integers(1, 6), min_size=1, max_size=3))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(entry, min_size=1, max_size=25), st.integers(0, 3), st.integers(0, 2), st.booleans())
    def check(entries, twice, tied, with_config):
        tensors = [TensorRecord(f"model.layers.{l}.{stem.format(e=e)}.{last}", dt, tuple(shape), "f")
                   for l, stem, e, last, dt, shape in entries]
        tensors += tensors[:twice]  # names stored twice (as in two shards)
        names = list(dict.fromkeys(t.name for t in tensors))
        ties = tuple(TieGroup(names=(a, b), evidence="test", stored=(a, b)) for a, b in zip(names[: 2 * tied : 2], names[1 : 2 * tied : 2]))
        config = {"num_local_experts": 6, "num_experts_per_tok": 2} if with_config else None
        ck = Checkpoint(target="t", format="safetensors", files=(), tensors=tuple(tensors), config=config)
        index = classify_all(ck.tensors)
        counts = count(index.records, ties, index)
        assert summarize(ck, index.records, ties, counts, index) == summarize(ck, index.records, ties, counts)

    check()
