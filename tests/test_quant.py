"""Quantized safetensors: tiny checkpoints packed following each method's layout; logical counts == the unquantized
model's sum(p.numel()) (transformers on the meta device), metadata tensors counted apart."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from ckptcount.api import audit  # noqa: E402
from ckptcount.analysis.quant import scheme_of  # noqa: E402

CONFIG = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, tie_word_embeddings=False,
)


def meta_llama():
    cfg = transformers.LlamaConfig(**CONFIG)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    return cfg, dict(model.named_parameters())


def z(shape, dtype):
    return torch.zeros(shape, dtype=dtype)


def pack(method: str, n: int, k: int, stem: str, bits: int = 4, g: int = 32) -> tuple[dict, dict]:
    """(packed weight tensors, metadata tensors) of one nn.Linear [n, k] as ``method`` stores it."""
    pw = 32 // bits if 32 % bits == 0 else None
    if method == "gptq":  # auto-gptq: qweight [K*b/32, N], qzeros [K/g, N*b/32], scales [K/g, N], g_idx [K]
        return {f"{stem}.qweight": z((k * bits // 32, n), torch.int32)}, {
            f"{stem}.qzeros": z((k // g, n * bits // 32), torch.int32),
            f"{stem}.scales": z((k // g, n), torch.float16),
            f"{stem}.g_idx": z((k,), torch.int32),
        }
    if method == "awq":  # autoawq gemm: qweight [K, N/pack], qzeros [K/g, N/pack], scales [K/g, N]
        return {f"{stem}.qweight": z((k, n // pw), torch.int32)}, {
            f"{stem}.qzeros": z((k // g, n // pw), torch.int32),
            f"{stem}.scales": z((k // g, n), torch.float16),
        }
    if method == "mlx":  # mlx: weight U32 [N, K/pack], scales and biases [N, K/g]
        return {f"{stem}.weight": z((n, k // pw), torch.uint32)}, {
            f"{stem}.scales": z((n, k // g), torch.float16),
            f"{stem}.biases": z((n, k // g), torch.float16),
        }
    if method == "bnb-4bit":  # bitsandbytes Params4bit: flat U8 [(N*K+1)/2, 1] + quant state
        return {f"{stem}.weight": z(((n * k + 1) // 2, 1), torch.uint8)}, {
            f"{stem}.weight.absmax": z((n * k // 64,), torch.float32),
            f"{stem}.weight.quant_map": z((16,), torch.float32),
            f"{stem}.weight.quant_state.bitsandbytes__nf4": z((90,), torch.uint8),
        }
    if method == "bnb-8bit":  # bitsandbytes Int8Params: I8 [N, K], SCB [N], weight_format scalar
        return {f"{stem}.weight": z((n, k), torch.int8)}, {
            f"{stem}.SCB": z((n,), torch.float32),
            f"{stem}.weight_format": z((), torch.uint8),
        }
    if method == "fp8":  # block-wise FP8 (DeepSeek-V3 style): weight F8_E4M3 [N, K], weight_scale_inv [N/128, K/128]
        return {f"{stem}.weight": z((n, k), torch.float8_e4m3fn)}, {
            f"{stem}.weight_scale_inv": z((math.ceil(n / 128), math.ceil(k / 128)), torch.float32),
            f"{stem}.input_scale": z((), torch.float32),
        }
    if method == "compressed-tensors":  # pack-quantized: weight_packed I32 [N, K/pack], weight_scale [N, K/g]...
        return {f"{stem}.weight_packed": z((n, k // pw), torch.int32)}, {
            f"{stem}.weight_scale": z((n, k // g), torch.bfloat16),
            f"{stem}.weight_zero_point": z((n // pw, k // g), torch.int32),
            f"{stem}.weight_shape": z((2,), torch.int64),
        }
    raise AssertionError(method)


QCONFIGS = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True},
    "gptq3": {"quant_method": "gptq", "bits": 3, "group_size": 32},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": True},
    "mlx": {"group_size": 32, "bits": 4},
    "bnb-4bit": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "bnb-8bit": {"quant_method": "bitsandbytes", "load_in_8bit": True},
    "fp8": {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    "compressed-tensors": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 32, "type": "int"}}},
    },
}


def build(tmp_path, variant: str, *, nested: bool = False, mlx_override: bool = False):
    """A tiny Llama saved the way ``variant`` quantizes it: every Linear in the layers packed, the rest in F16."""
    cfg, params = meta_llama()
    method = {"gptq3": "gptq"}.get(variant, variant)
    bits = 3 if variant == "gptq3" else (8 if method in ("bnb-8bit", "fp8") else 4)
    tensors, packed, meta = {}, {}, {}
    for name, p in params.items():
        quantize = ".layers." in name and name.endswith("proj.weight") or (method == "mlx" and name.endswith(("embed_tokens.weight", "lm_head.weight")))
        if not quantize:
            tensors[name] = z(tuple(p.shape), torch.float16)
            continue
        stem = name[: -len(".weight")]
        b = 8 if mlx_override and stem == "model.layers.1.mlp.down_proj" else bits
        w, m = pack(method, p.shape[0], p.shape[1], stem, bits=b)
        packed.update(w)
        meta.update(m)
    tensors.update(packed)
    tensors.update(meta)
    folder = tmp_path / variant
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    qc = dict(QCONFIGS[variant])
    if mlx_override:
        qc["model.layers.1.mlp.down_proj"] = {"group_size": 32, "bits": 8}
    config = {**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]}
    key = "quantization" if method == "mlx" else "quantization_config"
    if nested:
        config["text_config"] = {key: qc}
    else:
        config[key] = qc
    (folder / "config.json").write_text(json.dumps(config))
    return folder, params, packed, meta, tensors


def nbytes(t) -> int:
    return t.numel() * t.element_size()


VARIANTS = ["gptq", "gptq3", "awq", "mlx", "bnb-4bit", "bnb-8bit", "fp8", "compressed-tensors"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_logical_count_equals_unquantized_model(tmp_path, variant):
    folder, params, packed, meta, tensors = build(tmp_path, variant)
    report = audit(str(folder))
    c, q = report.counts, report.quantization
    assert c.parameters == sum(p.numel() for p in params.values())  # the oracle: the unquantized model
    attention = sum(p.numel() for n, p in params.items() if ".self_attn." in n)
    mlp = sum(p.numel() for n, p in params.items() if ".mlp." in n)
    assert c.by_component["attention"].elements == attention
    assert c.by_component["mlp"].elements == mlp
    assert c.by_component["output_head"].elements == params["lm_head.weight"].numel()
    assert report.ties == ()
    assert q["method"] == {"gptq3": "gptq"}.get(variant, variant)
    assert q["stored_elements_in_file"] == sum(t.numel() for t in tensors.values())
    assert sorted(q["metadata"]["names"]) == sorted(meta)
    assert q["metadata"]["elements"] == sum(t.numel() for t in meta.values())
    assert q["metadata"]["bytes"] == sum(nbytes(t) for t in meta.values())
    logical = sum(params[n.rsplit(".", 1)[0] + ".weight"].numel() for n in packed)
    assert q["quantized"] == {"tensors": len(packed), "elements": logical, "bytes": sum(nbytes(t) for t in packed.values())}
    expected_bpw = 8 * (sum(nbytes(t) for t in packed.values()) + q["metadata"]["bytes"]) / logical
    assert q["bits_per_weight"] == round(expected_bpw, 4)
    assert report.checkpoint.findings == ()
    meta_buffers = {n for b in c.buffers if b.reason.startswith("quantization metadata") for n in b.names}
    assert meta_buffers == set(meta)


def test_gptq_4bit_effective_bits(tmp_path):
    """4 bits + per-group (32) F16 scale and packed 4-bit zero, + the I32 g_idx over K: a number one can work by hand."""
    folder, params, packed, meta, _ = build(tmp_path, "gptq")
    q = audit(str(folder)).quantization
    # per weight: 4 bits; scales 16/32; qzeros 4/32; g_idx: 32 bits per input column, / N rows
    linears = [(p.shape[0], p.shape[1]) for n, p in params.items() if ".layers." in n and n.endswith("proj.weight")]
    bits = sum(n * k * 4 + n * k // 32 * 16 + n * k // 32 * 4 + k * 32 for n, k in linears)
    assert q["bits_per_weight"] == round(bits / sum(n * k for n, k in linears), 4)


def test_quantization_config_under_text_config(tmp_path):
    folder, params, *_ = build(tmp_path, "bnb-4bit", nested=True)
    report = audit(str(folder))
    assert report.counts.parameters == sum(p.numel() for p in params.values())
    assert "text_config.quantization_config" in report.quantization["evidence"]


def test_mlx_per_module_bits(tmp_path):
    folder, params, packed, *_ = build(tmp_path, "mlx", mlx_override=True)
    assert packed["model.layers.1.mlp.down_proj.weight"].shape[1] == 128 // 4  # 8-bit: 4 values per word
    report = audit(str(folder))
    assert report.counts.parameters == sum(p.numel() for p in params.values())


def test_mxfp4_gpt_oss(tmp_path):
    """gpt-oss stores expert weights as MXFP4 *_blocks [E, rows, K/32, 16] U8 with *_scales [E, rows, K/32] U8."""
    cfg = transformers.GptOssConfig(
        vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, num_local_experts=4, num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"],
    )
    with torch.device("meta"):
        params = dict(transformers.GptOssForCausalLM(cfg).named_parameters())
    tensors, meta = {}, {}
    for name, p in params.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            e, k, n = p.shape  # in memory [E, in, out]; stored transposed [E, out, in/32, 16]
            tensors[name + "_blocks"] = z((e, n, k // 32, 16), torch.uint8)
            meta[name + "_scales"] = z((e, n, k // 32), torch.uint8)
        else:
            tensors[name] = z(tuple(p.shape), torch.bfloat16)
    tensors.update(meta)
    save_file(tensors, tmp_path / "model.safetensors")
    config = {**cfg.to_dict(), "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = audit(str(tmp_path))
    total = sum(p.numel() for p in params.values())
    assert report.counts.parameters == total
    assert sorted(report.quantization["metadata"]["names"]) == sorted(meta)
    # MoE on the quantized model: per expert gate_up [H, 2I] + bias [2I] + down [I, H] + bias [H]
    H, I, E, k, L = 64, 32, 4, 2, 2
    per_expert = H * 2 * I + 2 * I + I * H + H
    assert report.moe["total"] == total
    assert report.moe["active"] == total - L * (E - k) * per_expert


def test_unquantized_model_has_no_quantization_key(fixtures_dir):
    from ckptcount.report.render import target_dict

    d = target_dict(audit(str(fixtures_dir / "gpt2")))
    assert "quantization" not in d and "moe" not in d
    assert d["parameters"] == 124_439_808


def test_packed_names_without_config_are_a_finding(tmp_path):
    save_file({"l.qweight": z((8, 64), torch.int32), "l.scales": z((1, 64), torch.float16)}, tmp_path / "model.safetensors")
    report = audit(str(tmp_path))
    assert [f.kind for f in report.checkpoint.findings] == ["quantization"]
    assert report.quantization is None


def test_scheme_of():
    assert scheme_of(None) is None
    assert scheme_of({"model_type": "llama"}) is None
    assert scheme_of({"quantization_config": {"quant_method": "awq", "w_bit": 4, "q_group_size": 128}}).bits == 4
    s = scheme_of({"quantization_config": {"quant_method": "bitsandbytes", "_load_in_8bit": True}})
    assert s.method == "bnb-8bit"
    assert scheme_of({"quantization": {"bits": 6, "group_size": 64}}).method == "mlx"


@pytest.mark.parametrize("variant", VARIANTS)
def test_preflight_memory_from_the_counts_is_the_sum_over_stored_tensors(tmp_path, variant):
    """The Hub path gives preflight the report's counts (one record per stored tensor, packed ones at their stored
    bytes) instead of a pass over the tensors: the same bytes as summing every stored tensor, packed or not."""
    from ckptcount.analysis.preflight import memory_at, preflight

    folder, *_ , tensors = build(tmp_path, variant)
    report = audit(str(folder), dtype="fp16")
    with_counts = preflight(report.checkpoint, counts=report.counts, dtype="fp16")
    assert with_counts.memory_stored == memory_at(report.checkpoint, None) == sum(nbytes(t) for t in tensors.values())
    assert with_counts == preflight(report.checkpoint, dtype="fp16") == report.preflight


def test_metadata_by_last_part_agrees_with_the_suffix_rules():
    """prepare() finds FP8/GPTQ/AWQ/bnb-8bit/compressed-tensors metadata by a dict lookup on the name's last part;
    _meta_reason (the suffix loop) is the reference, on every suffix and near misses."""
    from ckptcount.analysis.quant import _BY_LAST_PART, _META, Scheme, _meta_reason

    for method, by_last in _BY_LAST_PART.items():
        scheme = Scheme(method, 4, None, "test", {})
        candidates = {s.lstrip(".") for sfxs in _META.values() for s in sfxs} | {"weight", "weight_scale_inv_x", "x_input_scale"}
        for last in candidates:
            for name in (f"model.layers.0.self_attn.q_proj.{last}", last, f"a.{last}.b", f"a.b{last}"):
                dot = name.rfind(".")
                fast = by_last.get(name[dot:]) if dot >= 0 else None
                assert fast == _meta_reason(name, scheme, set()), (method, name)


def _analysed(tensors, config, ties=(), files=("f",)):
    from ckptcount.api import analyse
    from ckptcount.records import Checkpoint, FileRecord

    records = tuple(FileRecord(f, 0, 0, 0, False, format="pytorch") for f in files)
    return analyse(Checkpoint("t", "pytorch", records, tuple(tensors), config=config, ties=tuple(ties)))


@pytest.mark.parametrize("qc", [{"quant_method": "fp8"}, {"quant_method": "gptq", "bits": 4}])
def test_stored_elements_in_file_count_one_storage_once_packed_or_not(qc):
    """torch.save of tied weights: two names, one storage. The quantization summary's stored elements follow the
    counts' rule (one storage once) whether or not something is packed (review of 2026-11-27)."""
    from ckptcount.records import TensorRecord, TieGroup

    def t(name, shape, dtype="F16", storage=None):
        return TensorRecord(name, dtype, shape, "f", storage=storage)

    names = ("model.embed_tokens.weight", "lm_head.weight")
    tie = TieGroup(names, "shared storage", names, True)
    quantized = t("model.layers.0.mlp.up_proj.weight", (16, 8), "F8_E4M3", "a") if qc["quant_method"] == "fp8" else t("model.layers.0.mlp.up_proj.qweight", (1, 16), "I32", "a")
    r = _analysed([t(names[0], (10, 8), storage="s"), t(names[1], (10, 8), storage="s"), quantized], {"quantization_config": qc}, [tie])
    assert r.quantization["stored_elements_in_file"] == 80 + quantized.numel  # the tied pair once
    assert r.counts.stored_as_views == ("lm_head.weight",)


def test_metadata_names_in_file_order_with_a_name_stored_twice():
    from ckptcount.records import TensorRecord

    def t(name, shape, dtype="F16", f="a"):
        return TensorRecord(name, dtype, shape, f)

    tensors = [t("l0.qweight", (1, 16), "I32"), t("l0.scales", (1, 16)), t("l0.qzeros", (1, 2), "I32"),
               t("l1.qweight", (1, 16), "I32", "b"), t("l1.scales", (1, 16), "F16", "b"), t("l0.scales", (1, 16), "F16", "b")]
    r = _analysed(tensors, {"quantization_config": {"quant_method": "gptq", "bits": 4}}, files=("a", "b"))
    assert r.quantization["metadata"]["names"] == ["l0.scales", "l0.qzeros", "l1.scales", "l0.scales"]
