"""Write fixtures/llama-3.1-8b: the published config.json of meta-llama/Llama-3.1-8B and a header-only
model.safetensors whose names, shapes and dtypes come from transformers' LlamaForCausalLM built from that config on
the meta device (nothing is allocated). A header-only file is exactly 8 + N bytes.

The Hub repo holds the same 291 tensors in four shards with an index; one file is enough for the README's preflight
example (GQA, 32k context: docs/preflight.md), whose figures depend on the names, shapes, dtypes and config only.

    python scripts/make_llama_fixture.py [--out fixtures]
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

# config.json of meta-llama/Llama-3.1-8B as published on the Hub
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
DTYPES = {"torch.bfloat16": ("BF16", 2)}


def header_only_file(tensors: dict[str, tuple[str, int, list[int]]], metadata: dict[str, str]) -> bytes:
    """8-byte length + JSON header, tensors laid out in name order, contiguous from offset 0."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        dtype, size, shape = tensors[name]
        numel = 1
        for d in shape:
            numel *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + numel * size]}
        offset += numel * size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw


def main() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures")
    args = parser.parse_args()
    config = LlamaConfig(**{k: v for k, v in CONFIG.items() if k not in ("architectures", "transformers_version")})
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tensors = {k: (*DTYPES[str(v.dtype)], list(v.shape)) for k, v in model.state_dict().items()}
    target = args.out / "llama-3.1-8b"
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.safetensors").write_bytes(header_only_file(tensors, {"format": "pt"}))
    (target / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print(f"{target}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
