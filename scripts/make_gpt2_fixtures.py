"""Write fixtures/gpt2{,-medium,-large,-xl}: config.json plus a header-only model.safetensors per size.

The layout reproduces the openai-community files on the Hub: base-model names (no ``transformer.`` prefix, no
``lm_head.weight``), all F32, and the 4-D causal-mask buffers ``h.N.attn.bias`` [1,1,1024,1024] that transformers 5 no
longer has (so they are added here). Names, shapes and dtypes come from transformers' GPT2Model built on the meta device,
so nothing is allocated. A header-only file is exactly 8 + N bytes: the header of the real file without its data.

    python scripts/make_gpt2_fixtures.py [--out fixtures]
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

SIZES = {  # name: (n_embd, n_layer, n_head), as in the Hub configs
    "gpt2": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
    "gpt2-xl": (1600, 48, 25),
}
DTYPES = {"torch.float32": ("F32", 4)}


def hub_config(n_embd: int, n_layer: int, n_head: int) -> dict:
    """The keys of the Hub's config.json for these models; note: no ``tie_word_embeddings`` key."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "vocab_size": 50257,
    }


def header_only_file(tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str]) -> bytes:
    """8-byte length + JSON header, tensors laid out in name order, contiguous from offset 0."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        numel = 1
        for d in shape:
            numel *= d
        size = numel * {"F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw


def build(name: str, out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2Model

    n_embd, n_layer, n_head = SIZES[name]
    cfg = hub_config(n_embd, n_layer, n_head)
    with torch.device("meta"):
        model = GPT2Model(GPT2Config(**{k: v for k, v in cfg.items() if k != "architectures"}))
    tensors = {k: (DTYPES[str(v.dtype)][0], list(v.shape)) for k, v in model.state_dict().items()}
    for i in range(n_layer):
        tensors[f"h.{i}.attn.bias"] = ("F32", [1, 1, 1024, 1024])  # the causal mask the Hub files still carry
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.safetensors").write_bytes(header_only_file(tensors, {"format": "pt"}))
    (target / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"{target}: {len(tensors)} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures")
    args = parser.parse_args()
    for name in SIZES:
        build(name, args.out)


if __name__ == "__main__":
    main()
