"""Tiny real repos that hold several models or an adapter, written by each library's own save functions, with the
oracle counts taken from the instantiated modules (``sum(p.numel() for p in module.parameters())``) and peft's own
``get_nb_trainable_parameters``.

Each builder is deterministic (seeded) and takes well under a few seconds on two CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def diffusers_pipeline(folder: Path, *, fp16: bool = True) -> dict:
    """A StableDiffusionPipeline (unet, vae, text_encoder, tokenizer, scheduler; no safety checker) saved by
    ``save_pretrained``, and again as the fp16 variant (``*.fp16.safetensors`` beside the plain files)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
    )
    text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16))
    vocab_dir = folder.parent / f"{folder.name}-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3}))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    if fp16:
        pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    components = {"unet": params(unet), "vae": params(vae), "text_encoder": params(text)}
    return {"components": components, "total": sum(components.values()), "non_weight": ["scheduler", "tokenizer"]}


def sentence_transformer(folder: Path, *, max_shard_size: str | None = None) -> dict:
    """A SentenceTransformer of a tiny BERT, Pooling, Dense(16 -> 8) and Normalize, saved by ``model.save``: the
    transformer's weights at the root, ``2_Dense/model.safetensors``, and two modules without weights. With
    ``max_shard_size`` the root module is written sharded (``model.safetensors.index.json``), as the large embedding
    models on the Hub are (their transformer's own ``save_pretrained``, as the module's ``save`` calls it)."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # older sentence-transformers keep them in sentence_transformers.models
        from sentence_transformers import models
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    bert_dir = folder.parent / f"{folder.name}-bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]))
    BertModel(BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)).save_pretrained(bert_dir)
    BertTokenizer(str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    transformer, dense = models.Transformer(str(bert_dir)), models.Dense(16, 8)
    model = SentenceTransformer(modules=[transformer, models.Pooling(16), dense, models.Normalize()])
    model.save(str(folder))
    if max_shard_size is not None:
        (folder / "model.safetensors").unlink()
        transformer.model.save_pretrained(folder, max_shard_size=max_shard_size)
    return {"modules": {"": params(transformer), "2_Dense": params(dense)}, "total": params(model), "non_weight": ["1_Pooling", "3_Normalize"]}


def tiny_llama(folder: Path, *, hidden: int = 32):
    """A tiny LlamaForCausalLM saved by ``save_pretrained``; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model


def peft_adapter(folder: Path, base_folder: Path, kind: str = "lora", *, base_name: str = "test/tiny-llama", dora: bool = False, modules_to_save=None) -> dict:
    """A PEFT adapter of :func:`tiny_llama` saved by ``save_pretrained``: LoRA (r=8, alpha=16 on q_proj and v_proj,
    optionally DoRA and trained copies), IA3 or LoHa; the oracle is peft's own ``get_nb_trainable_parameters``."""
    import peft

    base = tiny_llama(base_folder)
    base_params = params(base)
    if kind == "lora":
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=dora, modules_to_save=modules_to_save)
    elif kind == "ia3":
        config = peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    elif kind == "loha":
        config = peft.LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    else:
        raise ValueError(kind)
    model = peft.get_peft_model(base, config)
    # saved naming the local base (peft looks its config up when saving: no network), then named as on the Hub
    model.peft_config["default"].base_model_name_or_path = str(base_folder)
    model.save_pretrained(folder)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = base_name
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2))
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable": trainable, "total": total, "base": base_params, "config": json.loads((folder / "adapter_config.json").read_text())}


def gguf_set(folder: Path, names=("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"), *, tied=(True, True)) -> dict:
    """GGUF files of one tiny llama-like model (tests/test_gguf.py's writer), one per name; the oracle is
    gguf.GGUFReader's element count per file (a tied head is one tensor: not stored)."""
    import gguf
    from test_gguf import write_model

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, t in zip(names, tied):
        path = folder / name
        write_model(str(path), tied=t)
        reader = gguf.GGUFReader(path)
        out[name] = {"bytes": path.stat().st_size, "parameters": int(sum(int(x.n_elements) for x in reader.tensors))}
    return out


def gguf_f32_set(folder: Path) -> dict:
    """Two F32 GGUF files of one tiny model, each storing its output head: in one a byte-identical copy of the token
    embedding, in the other a different matrix; the oracle is numpy's Pearson r of the two tensors as gguf.GGUFReader
    reads them back."""
    import gguf
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((16, 8)).astype(np.float32)
    out = {}
    for name, head in (("tiny-F32.gguf", embedding), ("tiny-F32-retrained.gguf", rng.standard_normal((16, 8)).astype(np.float32))):
        w = gguf.GGUFWriter(str(folder / name), "llama")
        w.add_block_count(1)
        w.add_embedding_length(8)
        w.add_context_length(64)
        w.add_tensor("token_embd.weight", embedding)
        w.add_tensor("output_norm.weight", np.ones(8, np.float32))
        w.add_tensor("output.weight", head)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        t = {x.name: np.asarray(x.data, dtype=np.float64).ravel() for x in gguf.GGUFReader(folder / name).tensors}
        out[name] = float(np.corrcoef(t["token_embd.weight"], t["output.weight"])[0, 1])
    return out
