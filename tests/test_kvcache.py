"""KV cache sizes against forward-pass oracles: a tiny transformers model per family, N tokens with use_cache=True,
the bytes of every tensor the returned cache holds; GGUF against llama.cpp's formula on files gguf's writer wrote.

ckptcount reads only the config.json-like dict each case writes (no ``layer_types`` unless the case gives them, as
most Hub configs); transformers builds the model from the same dict. Layout differences are asserted exactly:
a transformers sliding layer keeps ``sliding_window - 1`` tokens between steps where ckptcount (as vLLM) counts
``sliding_window``."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ckptcount.api import audit  # noqa: E402
from ckptcount.analysis.kvcache import KVUnknown, estimate, shape_from_config  # noqa: E402

CACHE_TENSORS = {"keys", "values", "conv_states", "recurrent_states"}


def cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers Cache holds, walking its layers (self- and cross-attention caches of an
    EncoderDecoderCache); 0-dim bookkeeping tensors (lengths, window sizes) are not cache. Any other tensor-holding
    attribute fails the test, so nothing the cache allocates is missed."""
    if hasattr(cache, "self_attention_cache"):
        return cache_bytes(cache.self_attention_cache) + cache_bytes(cache.cross_attention_cache)
    total = 0
    for layer in cache.layers:
        for name, v in vars(layer).items():
            values = v.values() if isinstance(v, dict) else [v]
            tensors = [t for t in values if isinstance(t, torch.Tensor) and t.dim() > 0]
            if tensors:
                assert name in CACHE_TENSORS, f"{type(layer).__name__}.{name} holds tensors the walk does not know"
                total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def run_causal(raw: dict, n: int, **forward):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**raw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.randint(0, raw["vocab_size"], (1, n)), use_cache=True, **forward)
    return model, out.cache


def fp32(raw: dict, n: int, batch: int = 1):
    return estimate(shape_from_config(raw), n, batch, dtype="fp32", dtype_from="test")


BASE = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({**BASE, "model_type": "llama", "num_hidden_layers": 3, "num_key_value_heads": 2}, id="llama-gqa"),
        pytest.param({**BASE, "model_type": "llama", "num_hidden_layers": 2}, id="llama-mha-no-kv-heads"),
        pytest.param({**BASE, "model_type": "qwen2", "num_hidden_layers": 2, "num_key_value_heads": 1}, id="qwen2-mqa"),
        pytest.param({**BASE, "model_type": "qwen3", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 16}, id="qwen3-explicit-head-dim"),
        pytest.param({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}, id="gpt2-n-keys"),
    ],
)
def test_standard_attention_matches_forward_pass(raw):
    n = 11
    _, cache = run_causal(raw, n)
    kv = fp32(raw, n)
    assert cache_bytes(cache) == kv.total_bytes == kv.bytes_per_token * n
    assert kv.shape.family == "attention" and kv.fixed_bytes == 0


def test_assumptions_are_stated():
    mha = shape_from_config({**BASE, "model_type": "llama", "num_hidden_layers": 2})
    assert any("no num_key_value_heads" in a for a in mha.assumptions)
    assert any("no head_dim" in a for a in mha.assumptions)
    explicit = shape_from_config({**BASE, "model_type": "qwen3", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 16})
    assert explicit.assumptions == ()
    # a key config.json leaves out takes transformers' config class default, and says so (Qwen3Config head_dim=128)
    qwen3 = shape_from_config({**BASE, "model_type": "qwen3", "num_hidden_layers": 2, "num_key_value_heads": 2})
    assert qwen3.groups[0].elements_per_token == 2 * 2 * 128
    assert "no head_dim: 128, the default of transformers' qwen3 config class" in qwen3.assumptions
    with pytest.raises(KVUnknown, match="layer count"):
        shape_from_config({"model_type": "llama", "hidden_size": 32})
    with pytest.raises(KVUnknown, match="no config.json"):
        shape_from_config(None)


SLIDING = [
    pytest.param({**BASE, "model_type": "mistral", "num_hidden_layers": 2, "num_key_value_heads": 2, "sliding_window": 8}, 2, id="mistral-all-sliding"),
    pytest.param({**BASE, "model_type": "gemma2", "num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 8}, 2, id="gemma2-alternating"),
    pytest.param({**BASE, "model_type": "gemma3_text", "num_hidden_layers": 7, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 8, "sliding_window_pattern": 3}, 5, id="gemma3-pattern"),
    pytest.param({**BASE, "model_type": "gemma3_text", "num_hidden_layers": 7, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 8}, 6, id="gemma3-default-pattern-6"),
    pytest.param(
        {**BASE, "model_type": "qwen2", "num_hidden_layers": 4, "num_key_value_heads": 2, "sliding_window": 8, "use_sliding_window": True, "max_window_layers": 1},
        3,
        id="qwen2-max-window-layers",
    ),
    pytest.param(
        {**BASE, "model_type": "qwen3", "num_hidden_layers": 3, "num_key_value_heads": 2, "sliding_window": 8, "use_sliding_window": True, "layer_types": ["full_attention", "sliding_attention", "full_attention"]},
        1,
        id="layer-types",
    ),
]


@pytest.mark.parametrize("raw,sliding_layers", SLIDING)
def test_sliding_window_layers_stop_at_the_window(raw, sliding_layers):
    w = raw["sliding_window"]
    kv_short = fp32(raw, w - 3)
    assert sum(g.layers for g in kv_short.shape.groups if g.window == w) == sliding_layers
    per_layer = kv_short.shape.groups[0].elements_per_token * 4  # fp32 bytes, one layer, one token
    # within the window: every layer holds every token, in both
    _, cache = run_causal(raw, w - 3)
    assert cache_bytes(cache) == kv_short.total_bytes == kv_short.bytes_per_token * (w - 3)
    # past the window: ckptcount counts `window` tokens per sliding layer (what the next step attends to, as vLLM
    # allocates); transformers' DynamicSlidingWindowLayer keeps the last `window - 1` between steps: one token less
    n = w + 9
    _, cache = run_causal(raw, n)
    kv = fp32(raw, n)
    assert cache_bytes(cache) == kv.total_bytes - sliding_layers * per_layer
    assert kv.total_bytes == kv.bytes_per_token_unwindowed * n + sliding_layers * per_layer * w


MLA = {
    **BASE,
    "model_type": "deepseek_v3",
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "q_lora_rank": 24,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 12,
    "v_head_dim": 10,
    "moe_intermediate_size": 16,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
}


@pytest.mark.parametrize("model_type", ["deepseek_v3", "deepseek_v2"])
def test_mla_latent_matches_forward_pass(model_type):
    """vLLM's MLA convention (kv_lora_rank + qk_rope_head_dim per token per layer): checked twice, against the output
    of every layer's kv_a_proj_with_mqa (the latent before it is split) and against the cache transformers 5
    returns, which holds the same compressed latent (normed kv, rotated k_pe)."""
    raw = {**MLA, "model_type": model_type}
    if model_type == "deepseek_v2":
        raw.update(topk_method="greedy")
    n = 9
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw), dtype=torch.float32).eval()
    latents = []
    hooks = [m.register_forward_hook(lambda mod, i, o: latents.append(o)) for name, m in model.named_modules() if name.endswith("kv_a_proj_with_mqa")]
    with torch.no_grad():
        cache = model(torch.randint(0, 64, (1, n)), use_cache=True).cache
    for h in hooks:
        h.remove()
    kv = fp32(raw, n)
    assert len(latents) == raw["num_hidden_layers"]
    assert sum(t.numel() * t.element_size() for t in latents) == kv.total_bytes
    assert cache_bytes(cache) == kv.total_bytes == kv.bytes_per_token * n
    assert kv.shape.family == "mla"
    # the expanded layout (transformers 4.x, naive MLA): per layer heads × (nope + rope + v); ours is far smaller
    (expanded,) = kv.shape.other_conventions.values()
    assert expanded == 2 * 4 * (12 + 8 + 10)


QWEN3_NEXT = {
    **BASE,
    "model_type": "qwen3_next",
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
    "linear_conv_kernel_dim": 3,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}
JAMBA = {
    **BASE,
    "model_type": "jamba",
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "attn_layer_period": 2,
    "attn_layer_offset": 1,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 2,
    "mamba_d_state": 4,
    "mamba_d_conv": 3,
    "mamba_expand": 2,
    "mamba_dt_rank": 4,
}


@pytest.mark.parametrize("raw", [pytest.param(QWEN3_NEXT, id="qwen3-next"), pytest.param(JAMBA, id="jamba")])
def test_hybrid_fixed_state_plus_attention(raw):
    """Recurrent layers keep a state whose size does not depend on the context: two forward passes of different
    lengths differ by exactly the attention layers' per-token bytes, and each matches ckptcount's state + per token."""
    sizes = {}
    for n in (5, 13):
        _, cache = run_causal(raw, n)
        kv = fp32(raw, n)
        assert cache_bytes(cache) == kv.total_bytes == kv.fixed_bytes + kv.bytes_per_token * n
        sizes[n] = cache_bytes(cache)
    assert kv.shape.family == "hybrid" and kv.fixed_bytes > 0
    assert sizes[13] - sizes[5] == 8 * kv.bytes_per_token
    attention_layers = sum(g.layers for g in kv.shape.groups if g.elements_per_token)
    assert attention_layers == 1 if raw is QWEN3_NEXT else 2


def test_t5_self_and_cross_attention():
    from transformers import T5Config, T5ForConditionalGeneration

    raw = {"model_type": "t5", "vocab_size": 64, "d_model": 32, "d_kv": 6, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4, "is_encoder_decoder": True}
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**{k: v for k, v in raw.items() if k != "model_type"})).eval()
    enc, dec = 13, 5
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 64, (1, enc)), decoder_input_ids=torch.randint(0, 64, (1, dec)), use_cache=True)
    shape = shape_from_config(raw)
    self_g, cross_g = shape.groups
    assert (self_g.kind, cross_g.kind, self_g.layers, cross_g.layers) == ("full_attention", "cross_attention", 3, 3)
    expected = estimate(shape, dec, dtype="fp32", dtype_from="t").group_bytes(self_g) + estimate(shape, enc, dtype="fp32", dtype_from="t").group_bytes(cross_g)
    assert cache_bytes(out.cache) == expected
    assert any("cross-attention at an encoder input as long as --context" in a for a in shape.assumptions)


def test_whisper_cross_attention_at_the_encoder_frames():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    raw = {
        "model_type": "whisper", "vocab_size": 64, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 8, "max_source_positions": 12,
        "max_target_positions": 32, "is_encoder_decoder": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
    }  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**{k: v for k, v in raw.items() if k != "model_type"})).eval()
    n = 7
    with torch.no_grad():
        out = model(input_features=torch.randn(1, 8, 2 * 12), decoder_input_ids=torch.randint(0, 64, (1, n)), use_cache=True)
    kv = fp32(raw, n)
    assert cache_bytes(out.cache) == kv.total_bytes == kv.bytes_per_token * n + kv.fixed_bytes
    assert kv.fixed_bytes == 2 * 12 * 2 * 32 * 4  # decoder layers × frames × (k + v) × d_model × fp32


# --- GGUF: llama.cpp's formula on files written by gguf's GGUFWriter -------------------------------------------


def _gguf(path, *, layers=3, embd=64, heads=8, kv_heads=2, key_length=None):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(4096)
    w.add_block_count(layers)
    w.add_embedding_length(embd)
    w.add_head_count(heads)
    if kv_heads is not None:
        w.add_head_count_kv(kv_heads)
    if key_length is not None:
        w.add_key_length(key_length)
        w.add_value_length(key_length)
    w.add_tensor("token_embd.weight", np.zeros((16, embd), np.float16))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((embd, embd), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("kv_heads,key_length", [(2, None), (None, None), (1, 24)])
def test_gguf_matches_llama_cpp_formula(tmp_path, kv_heads, key_length):
    from gguf import GGUFReader

    path = _gguf(tmp_path / "m.gguf", kv_heads=kv_heads, key_length=key_length)
    # llama.cpp (llama_hparams): n_embd_head_k = key_length or n_embd / n_head; n_embd_k_gqa = n_embd_head_k × n_head_kv
    fields = GGUFReader(path).fields
    val = lambda k: int(fields[k].parts[-1][0]) if k in fields else None  # noqa: E731
    n_layer, n_embd, n_head = val("llama.block_count"), val("llama.embedding_length"), val("llama.attention.head_count")
    n_head_kv = val("llama.attention.head_count_kv") or n_head
    head_k = val("llama.attention.key_length") or n_embd // n_head
    head_v = val("llama.attention.value_length") or n_embd // n_head
    n_ctx = 4096
    for kv_dtype, type_size in (("fp16", 2), ("fp32", 4)):
        report = audit(str(path), context=n_ctx, kv_dtype=kv_dtype if kv_dtype != "fp16" else None)
        kv = report.preflight.kv_cache
        assert kv.total_bytes == n_layer * n_ctx * (head_k * n_head_kv + head_v * n_head_kv) * type_size
        assert kv.shape.source == "gguf"
    assert kv.dtype == "fp32" and "llama.cpp" in kv.shape.convention


def test_gguf_fits_includes_the_cache(tmp_path):
    from ckptcount.cli import main
    from click.testing import CliRunner

    path = _gguf(tmp_path / "m.gguf")
    weights = audit(str(path)).counts.by_dtype["F16"].bytes
    cache = 3 * 1000 * (2 * 2 * 8) * 2  # layers × tokens × (k + v) × kv heads × head dim × f16
    ok = CliRunner().invoke(main, [str(path), "--context", "1000", "--fits", str(weights + cache), "--format", "json"])
    assert ok.exit_code == 0, ok.output
    pf = json.loads(ok.stdout)["targets"][0]["preflight"]
    assert pf["kv_cache"]["bytes_at_context"] == cache and pf["kv_cache"]["weights_plus_cache_bytes"] == weights + cache
    assert pf["checks"][0]["value"] == weights + cache
    over = CliRunner().invoke(main, [str(path), "--context", "1000", "--fits", str(weights + cache - 1)])
    assert over.exit_code == 3 and "KV cache at 1,000 tokens x 1 (fp16)" in over.stderr
    assert CliRunner().invoke(main, [str(path), "--batch", "2"]).exit_code == 2  # --batch without --context


def test_cli_batch_and_dtype_rules(tmp_path):
    """--batch multiplies; the cache dtype follows --kv-dtype, else a float --dtype, else the config's dtype."""
    from ckptcount.cli import main
    from click.testing import CliRunner
    from safetensors.torch import save_file

    raw = {**BASE, "model_type": "llama", "num_hidden_layers": 2, "num_key_value_heads": 2, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file({"w": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))

    def kv(*args):
        r = CliRunner().invoke(main, [str(tmp_path), "--context", "100", "--format", "json", *args])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)["targets"][0]["preflight"]["kv_cache"]

    per_token = 2 * 2 * 2 * 8  # layers × (k + v) × kv heads × head dim, elements
    assert kv()["bytes_per_token"] == per_token * 2 and kv()["dtype_from"] == "config: torch_dtype=bfloat16"
    assert kv("--dtype", "fp32")["bytes_per_token"] == per_token * 4
    assert kv("--dtype", "int4")["dtype"] == "bf16"  # int4 weights: the cache stays at the config's dtype
    assert kv("--kv-dtype", "fp8", "--batch", "3")["bytes_at_context"] == per_token * 100 * 3
