"""Generate large header-only checkpoints for scale tests and benchmarks (nothing is committed; written to --out).

* ``deepseek``: a DeepSeek-V3-sized sharded set: 163 shards, ~92,000 tensors (61 layers, 256 routed experts + shared
  experts, FP8 weights with ``weight_scale_inv``), plus ``model.safetensors.index.json`` and a config.
* ``wide``: one file with 100,000 tensors.

Every shard is a valid header-only safetensors file (8 + N bytes). Layout follows the published DeepSeek-V3 names.

    python scripts/make_scale_fixture.py deepseek --out /tmp/dsv3
    python scripts/make_scale_fixture.py wide --out /tmp/wide
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}
H, V, INTER, MOE_INTER, EXPERTS, LAYERS, DENSE, SHARDS = 7168, 129280, 18432, 2048, 256, 61, 3, 163


def header_only(tensors: list[tuple[str, str, list[int]]]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n * BYTES[dtype]]}
        offset += n * BYTES[dtype]
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw


def _fp8(name: str, out: int, inp: int) -> list[tuple[str, str, list[int]]]:
    return [(f"{name}.weight", "F8_E4M3", [out, inp]), (f"{name}.weight_scale_inv", "F32", [(out + 127) // 128, (inp + 127) // 128])]


def deepseek_tensors() -> list[tuple[str, str, list[int]]]:
    t: list[tuple[str, str, list[int]]] = [("model.embed_tokens.weight", "BF16", [V, H])]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        t += [(f"{p}.input_layernorm.weight", "BF16", [H]), (f"{p}.post_attention_layernorm.weight", "BF16", [H])]
        a = f"{p}.self_attn"
        t += _fp8(f"{a}.q_a_proj", 1536, H) + [(f"{a}.q_a_layernorm.weight", "BF16", [1536])] + _fp8(f"{a}.q_b_proj", 24576, 1536)
        t += _fp8(f"{a}.kv_a_proj_with_mqa", 576, H) + [(f"{a}.kv_a_layernorm.weight", "BF16", [512])]
        t += _fp8(f"{a}.kv_b_proj", 32768, 512) + _fp8(f"{a}.o_proj", H, 16384)
        if i < DENSE:
            t += _fp8(f"{p}.mlp.gate_proj", INTER, H) + _fp8(f"{p}.mlp.up_proj", INTER, H) + _fp8(f"{p}.mlp.down_proj", H, INTER)
            continue
        t += [(f"{p}.mlp.gate.weight", "BF16", [EXPERTS, H]), (f"{p}.mlp.gate.e_score_correction_bias", "F32", [EXPERTS])]
        for e in range(EXPERTS):
            x = f"{p}.mlp.experts.{e}"
            t += _fp8(f"{x}.gate_proj", MOE_INTER, H) + _fp8(f"{x}.up_proj", MOE_INTER, H) + _fp8(f"{x}.down_proj", H, MOE_INTER)
        s = f"{p}.mlp.shared_experts"
        t += _fp8(f"{s}.gate_proj", MOE_INTER, H) + _fp8(f"{s}.up_proj", MOE_INTER, H) + _fp8(f"{s}.down_proj", H, MOE_INTER)
    t += [("model.norm.weight", "BF16", [H]), ("lm_head.weight", "BF16", [V, H])]
    return t


def write_deepseek(out: Path) -> tuple[int, int]:
    out.mkdir(parents=True, exist_ok=True)
    tensors = deepseek_tensors()
    per = -(-len(tensors) // SHARDS)
    weight_map, total = {}, 0
    for k in range(SHARDS):
        chunk = tensors[k * per : (k + 1) * per]
        name = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        (out / name).write_bytes(header_only(chunk))
        for n, dtype, shape in chunk:
            weight_map[n] = name
            size = BYTES[dtype]
            for d in shape:
                size *= d
            total += size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": H,
              "num_hidden_layers": LAYERS, "n_routed_experts": EXPERTS, "num_experts_per_tok": 8,
              "n_shared_experts": 1, "first_k_dense_replace": DENSE, "vocab_size": V, "tie_word_embeddings": False,
              "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": [128, 128]}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return SHARDS, len(tensors)


def write_wide(out: Path, n: int = 100_000) -> tuple[int, int]:
    out.mkdir(parents=True, exist_ok=True)
    tensors = [(f"blocks.{i // 10}.mlp.fc{i % 10}.weight", "BF16", [64, 64]) for i in range(n)]
    (out / "model.safetensors").write_bytes(header_only(tensors))
    return 1, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["deepseek", "wide"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    files, tensors = (write_deepseek if args.kind == "deepseek" else write_wide)(args.out)
    print(f"{args.out}: {files} files, {tensors} tensors")


if __name__ == "__main__":
    main()
