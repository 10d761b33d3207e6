"""Sweep: ckptcount against independent oracles on tiny models of (nearly) every transformers architecture.

For each model type in transformers' auto mappings (causal LM first, then masked LM, seq2seq LM, then the base
``MODEL_MAPPING_NAMES`` for types none of those cover), the script

1. builds a tiny config: the config class defaults (``Config().to_dict()``) with size-like attributes shrunk
   generically (hidden 64, FFN 128, 2 layers, 2 heads, vocab 128, 128 positions, 4 experts...), the same inside
   nested sub-configs (text_config, vision_config, encoder, decoder...), per-layer lists cut to the new layer count
   and special token ids clamped into the vocabulary; then ``Config.from_dict``;
2. counts the model's parameters on the meta device (too big at the tiny config: skipped), then with
   ``torch.manual_seed(0)`` instantiates it on CPU in float32 and ``save_pretrained``s it (safetensors);
3. computes oracles from the instantiated model and the files, never from ckptcount:

   * parameters      ``sum(p.numel() for p in model.parameters())`` (tied weights once);
   * biases          ``named_parameters()`` that are 1-D with a name ending in "bias";
   * stored elements every tensor of every ``*.safetensors`` file, via huggingface_hub's header parser;
   * buffers         the file's tensors whose model name is a buffer, not a parameter
                     (``named_parameters(remove_duplicate=False)``), i.e. the persistent buffers as saved;
   * tie groups      names that share one Parameter object.

   transformers 5 ``save_pretrained`` reverts its weight conversions (Mixtral's fused ``experts.gate_up_proj`` is
   written as ``block_sparse_moe.experts.N.w1/w3.weight``): file names are mapped back to model names with the
   model's own conversion mapping applied forward, the way ``from_pretrained`` does (``rename_source_key``);
4. runs ``ckptcount.audit`` on the folder and compares: parameters, biases, stored elements, buffers by name, each
   stored tensor's kind (weight / bias / buffer) and the tie groups. Every disagreement is recorded with the tensor
   names, shapes and dtypes and how ckptcount got it wrong.

Robustness: the models are built in ONE worker process, one after the other (no pools); the parent only watches it.
A model that raises is recorded and the sweep goes on; a soft time guard (``--timeout``, SIGALRM) skips slow
builds; a worker that crashes or hangs (``--hard-timeout``) is killed, the model recorded, and a fresh worker
resumes with the next type.

    python scripts/sweep_transformers.py                         # the whole sweep
    python scripts/sweep_transformers.py --only gpt2,llama,t5    # a few types
    python scripts/sweep_transformers.py --limit 20 --verbose    # the first 20, with every misclassified name
    python scripts/sweep_transformers.py --mappings causal       # only the causal-LM mapping

Output: one line per type (match / MISMATCH / skipped: reason), then a summary and, for mismatches, the names.
Every result is also written as one JSON line to ``--results`` (default /tmp/ckptcount_sweep/results.jsonl).
Folders of mismatching models are kept under ``--workdir``/keep for inspection (``--keep-all`` keeps every one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAPPINGS = (
    ("causal", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("masked", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("seq2seq", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    ("base", "MODEL_MAPPING_NAMES"),
)

# ---------------------------------------------------------------------------------------------------------------------
# tiny configs

HIDDEN = 64
FFN = 128
LAYERS = 2
HEADS = 2
VOCAB = 128
POSITIONS = 128
EXPERTS = 4
TOPK = 2

HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim", "d_embed", "word_embed_proj_dim", "emb_dim")
FFN_KEYS = (
    "intermediate_size", "d_ff", "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_hidden_size",
    "mlp_dim", "hidden_dim", "inner_hidden_size", "feed_forward_size", "mlp_hidden_size",
)
LAYER_KEYS = (
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
    "num_decoder_layers", "num_encoder_layers", "text_num_hidden_layers",
)
HEAD_KEYS = (
    "num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads", "decoder_attention_heads",
    "num_decoder_attention_heads",
)
KV_HEAD_KEYS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv")
HEAD_DIM_KEYS = ("head_dim", "d_kv", "attention_head_size", "kv_channels")
VOCAB_KEYS = ("vocab_size", "n_vocab", "entity_vocab_size")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_sequence_length")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts", "zero_expert_num")
TOPK_KEYS = ("num_experts_per_tok", "moe_k", "num_selected_experts", "moe_topk", "top_k")
SMALL = {  # other sizes that multiply into big tensors
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "expert_intermediate_size": 64, "expert_ffn_hidden_size": 64,
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16,
}
TOKEN_ID_KEYS = (
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id",
    "mask_token_id", "unk_token_id", "forced_bos_token_id", "forced_eos_token_id",
)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _lower(d: dict, keys, value: int) -> None:
    for k in keys:
        if _is_int(d.get(k)) and d[k] > value:
            d[k] = value


def _pick_layers(v: list, n: int) -> list:
    """``n`` entries of a per-layer list, covering as many of its distinct values as possible (a sliding/full
    pattern keeps one full-attention layer), in their original order."""
    try:
        firsts = sorted({x: i for i, x in reversed(list(enumerate(v)))}.values())
    except TypeError:  # unhashable entries
        return v[:n]
    keep = list(firsts[:n])
    i = 0
    while len(keep) < n and i < len(v):
        if i not in keep:
            keep.append(i)
        i += 1
    return [v[j] for j in sorted(keep)[:n]]


HIDDEN_SUFFIXES = ("hidden_size", "_hidden_dim", "embed_dim", "emb_dim", "condition_dim", "codebook_dim", "projection_dim", "proj_size")


def shrink(d: dict, depth: int = 0, level: str = "tiny") -> dict:
    """A config dict (``to_dict()``) with its size-like attributes shrunk, recursively into sub-configs.

    ``level``: "aggressive" also shrinks every other int named like a hidden size (``out_hidden_size``,
    ``text_hidden_size``, ``*_embed_dim``...), so cross-config equalities hold; "tiny" the listed attributes only;
    "layers" only layer counts, vocabularies, positions and experts (hidden sizes as the defaults)."""
    d = dict(d)
    old_layers = [d[k] for k in LAYER_KEYS if _is_int(d.get(k))]
    old_heads = next((d[k] for k in HEAD_KEYS if _is_int(d.get(k))), None)
    if level != "layers":
        _lower(d, HIDDEN_KEYS, HIDDEN)
        _lower(d, FFN_KEYS, FFN)
        _lower(d, HEAD_KEYS, HEADS)
        for k in HEAD_KEYS:  # per-stage head counts (swin)
            if isinstance(d.get(k), list) and all(_is_int(x) for x in d[k]):
                d[k] = [min(x, HEADS) for x in d[k]]
        for k in KV_HEAD_KEYS:
            if _is_int(d.get(k)) and d[k] > 1:
                d[k] = 1 if old_heads and d[k] < old_heads else HEADS
        for k in HEAD_DIM_KEYS:
            if _is_int(d.get(k)) and d[k] > HIDDEN // HEADS:
                d[k] = HIDDEN // HEADS
        for k, v in SMALL.items():
            if _is_int(d.get(k)) and d[k] > v:
                d[k] = v
        # state-space heads: n_heads * head_dim == expand * hidden (mamba2, bamba, granitemoehybrid...)
        for nh, hd, ex in (("num_heads", "head_dim", "expand"), ("mamba_n_heads", "mamba_d_head", "mamba_expand")):
            if all(_is_int(d.get(k)) for k in (nh, hd, ex)) and _is_int(d.get("hidden_size")):
                d[hd] = d[ex] * d["hidden_size"] // d[nh]
        if level == "aggressive":
            for k, v in list(d.items()):
                if _is_int(v) and v > HIDDEN and k.endswith(HIDDEN_SUFFIXES) and k not in FFN_KEYS:
                    d[k] = HIDDEN
        rope = d.get("rope_parameters")
        if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
            hd = d.get("qk_rope_head_dim") or d.get("head_dim")
            if not _is_int(hd) and _is_int(d.get("hidden_size")) and _is_int(d.get("num_attention_heads")):
                hd = d["hidden_size"] // d["num_attention_heads"]
            sec = rope["mrope_section"]
            if _is_int(hd) and all(_is_int(x) for x in sec) and sum(sec) != hd // 2:
                target = hd // 2
                new = [max(1, x * target // sum(sec)) for x in sec]
                new[0] += target - sum(new)
                d["rope_parameters"] = dict(rope, mrope_section=new)
    _lower(d, LAYER_KEYS, LAYERS)
    _lower(d, VOCAB_KEYS, VOCAB)
    _lower(d, [k for k in d if "vocab" in k and "offset" not in k], VOCAB)  # vocab_size_per_layer_input, ...
    _lower(d, POSITION_KEYS, POSITIONS)
    if _is_int(d.get("moe_intermediate_size")):  # MoE configs whose expert count defaults to None (dots1)
        for k in ("n_routed_experts", "num_experts_per_tok", "n_shared_experts"):
            if k in d and d[k] is None:
                d[k] = {"n_routed_experts": EXPERTS, "num_experts_per_tok": TOPK, "n_shared_experts": 1}[k]
    _lower(d, EXPERT_KEYS, EXPERTS)
    _lower(d, TOPK_KEYS, TOPK)
    vocab = d.get("vocab_size")
    if _is_int(vocab):
        for k in TOKEN_ID_KEYS:
            v = d.get(k)
            if _is_int(v) and v >= vocab:
                d[k] = vocab - 1
            elif isinstance(v, list):
                d[k] = [x if not _is_int(x) or x < vocab else vocab - 1 for x in v]
    # per-layer lists (layer_types, ...): as many entries as the new layer count; per-layer dicts: the kept layers
    shrunk_layers = any(n > LAYERS for n in old_layers)
    for n in set(old_layers):
        if n > LAYERS:
            for k, v in list(d.items()):
                if isinstance(v, list) and len(v) == n:
                    d[k] = _pick_layers(v, LAYERS)
    if shrunk_layers:
        for k, v in list(d.items()):
            if k.startswith("per_layer") and isinstance(v, dict):
                d[k] = {i: x for i, x in v.items() if str(i).isdigit() and int(i) < LAYERS}
        # backbones: stage names and indices refer to the old depth
        for k in ("out_features", "out_indices"):
            if d.get(k) is not None:
                d[k] = None
    # sub-configs: anything that looks like a config dict
    if depth < 4:
        for k, v in list(d.items()):
            if isinstance(v, dict) and k not in ("quantization_config", "rope_scaling", "rope_parameters") and (
                "model_type" in v or k.endswith("_config") or k in ("encoder", "decoder")
            ):
                d[k] = shrink(v, depth + 1, level)
    return d


LEVELS = ("tiny", "aggressive", "layers", "default")


def configs(model_type: str):
    """(level, config or the exception) for each level of shrinking, the smallest first."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    base = cls().to_dict()
    for level in LEVELS:
        try:
            yield level, (cls.from_dict(shrink(base, level=level)) if level != "default" else cls())
        except Exception as e:  # noqa: BLE001
            yield level, e


def tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    return cls.from_dict(shrink(cls().to_dict()))


# ---------------------------------------------------------------------------------------------------------------------
# which class per type


def plan(mappings: list[str]) -> list[dict]:
    from transformers.models.auto import modeling_auto

    out: dict[str, dict] = {}
    for short, attr in MAPPINGS:
        if short not in mappings:
            continue
        for model_type, classes in getattr(modeling_auto, attr).items():
            if model_type in out:
                continue
            cls = classes[0] if isinstance(classes, (tuple, list)) else classes
            out[model_type] = {"type": model_type, "class": cls, "mapping": short}
    return list(out.values())


# ---------------------------------------------------------------------------------------------------------------------
# one model


class SoftTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise SoftTimeout()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    out = f"{type(e).__name__}: {text[0][:300] if text else ''}"
    if e.__cause__ is not None and type(e).__name__.startswith("StrictDataclass"):  # the validator's own message
        cause = str(e.__cause__).strip().splitlines()
        out += f" {type(e.__cause__).__name__}: {cause[0][:300] if cause else ''}"
    return out


def _name_mapper(model):
    """File name -> model name. save_pretrained reverts the model's weight conversions (revert_weight_conversion):
    a model key no converter touches is saved under its reversed renamings; those are inverted exactly here. Keys a
    converter fused or split (MoE experts) are mapped the way from_pretrained maps checkpoint keys (forward)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            PrefixChange, WeightConverter, WeightRenaming, apply_converters, apply_renamings, rename_source_key,
        )
    except ImportError:
        return lambda k: k, []
    conv = [x for x in (get_model_conversion_mapping(model, add_legacy=False) or []) if not isinstance(x, PrefixChange)]
    if not conv:
        return lambda k: k, []
    ren = [x for x in conv if isinstance(x, WeightRenaming)]
    cvt = [x for x in conv if isinstance(x, WeightConverter)]
    rev = [x.reverse_transform() for x in conv[::-1]]
    rev_ren = [x for x in rev if isinstance(x, WeightRenaming)]
    rev_cvt = [x for x in rev if isinstance(x, WeightConverter)]
    inverse: dict[str, str] = {}
    for key in model.state_dict():
        try:
            _, pattern = apply_converters(key, rev_cvt)
            if pattern is None:
                inverse.setdefault(apply_renamings(key, rev_ren), key)
        except Exception:  # noqa: BLE001
            pass

    def mapper(key: str) -> str:
        if key in inverse:
            return inverse[key]
        try:
            return rename_source_key(key, ren, cvt)[0]
        except Exception:  # noqa: BLE001
            return key

    return mapper, [repr(x)[:200] for x in conv]


def _file_tensors(folder: Path) -> dict[str, tuple[str, list[int], int]]:
    """Every tensor of every safetensors file: name -> (dtype, shape, elements), from huggingface_hub's parser."""
    from huggingface_hub import parse_safetensors_file_metadata  # noqa: F401  (imported to fail early if missing)
    from huggingface_hub import parse_local_safetensors_file_metadata

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        md = parse_local_safetensors_file_metadata(f)
        for name, info in md.tensors.items():
            n = 1
            for s in info.shape:
                n *= s
            out[name] = (str(info.dtype), list(info.shape), n)
    return out


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


def run_one(item: dict, workdir: Path, timeout: float, max_params: int, keep_all: bool) -> dict:
    import torch

    import transformers
    from ckptcount import audit

    res = dict(item, status="skipped", reason=None)
    t0 = time.perf_counter()
    folder = workdir / "models" / item["type"]
    shutil.rmtree(folder, ignore_errors=True)
    stage = "config"
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            cls = getattr(transformers, item["class"])
        except Exception as e:  # noqa: BLE001
            res["reason"] = f"import: {_first_line(e)}"
            return res
        # the smallest config that builds (on the meta device) and is small enough
        attempts, first, chosen, too_big, default_ok = [], None, None, [], None
        for level, config in configs(item["type"]):
            if isinstance(config, Exception):
                attempts.append(f"{level}: config: {_first_line(config)}")
                if level == "default":
                    default_ok = f"fails too: {_first_line(config)}"
                continue
            first = first or (level, config)
            stage = "meta"
            try:
                with torch.device("meta"):
                    meta = cls(config)
                n_meta = sum(p.numel() for p in meta.parameters())
                del meta
            except SoftTimeout:
                raise
            except Exception as e:  # noqa: BLE001
                attempts.append(f"{level}: build: {_first_line(e)}")
                if level == "default":
                    default_ok = f"fails too: {_first_line(e)}"
                continue
            if level == "default":
                default_ok = "builds"
            if n_meta > max_params:
                attempts.append(f"{level}: too big: {n_meta:,} parameters")
                too_big.append((n_meta, level))
                continue
            chosen = (level, config, n_meta)
            break
        res["attempts"] = attempts
        if chosen is None and too_big:
            n_meta, level = min(too_big)
            res["reason"] = f"too big: {n_meta:,} parameters at the smallest config that builds ({level}; > {max_params:,})"
            return res
        if chosen is None and first is None:
            res["reason"] = attempts[0].split(": ", 1)[1]  # the tiny config's error
            res["default_config"] = default_ok
            return res
        if chosen is None:  # no meta build at all: some inits do not run on meta; build the first config for real
            chosen = (first[0], first[1], None)
        res["level"], config, res["meta_params"] = chosen
        if chosen[0] != "tiny" and not any(a.startswith("tiny: too big") for a in attempts):
            res["why_not_tiny"] = attempts[0] if attempts else None
        stage = "build"
        torch.manual_seed(0)
        model = cls(config).float().eval()
        stage = "save"
        model.save_pretrained(folder)
        res["t_build"] = round(time.perf_counter() - t0, 2)
    except SoftTimeout:
        res["reason"] = f"timeout: over {timeout:g} s ({stage})"
        shutil.rmtree(folder, ignore_errors=True)
        return res
    except Exception as e:  # noqa: BLE001
        res["reason"] = f"{stage} ({res.get('level', 'tiny')} config): {_first_line(e)}"
        shutil.rmtree(folder, ignore_errors=True)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if stage == "build":
            res["default_config"] = _default_builds(cls, item["type"])
        return res
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

    try:
        compare(res, model, folder, audit)
    except Exception as e:  # noqa: BLE001  a bug in the comparison itself: say so, go on
        res["status"] = "error"
        res["reason"] = f"compare: {_first_line(e)}"
        res["traceback"] = traceback.format_exc()[-2000:]
    res["t_total"] = round(time.perf_counter() - t0, 2)
    if res["status"] == "match" and not keep_all:
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():
        keep = workdir / "keep" / item["type"]
        shutil.rmtree(keep, ignore_errors=True)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(keep))
        res["kept"] = str(keep)
    return res


def _default_builds(cls, model_type: str) -> str:
    """Whether the untouched default config builds (on the meta device): tells a shrink problem from a model that
    does not build from its defaults at all."""
    import torch
    from transformers import CONFIG_MAPPING

    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        config = CONFIG_MAPPING[model_type]()
        with torch.device("meta"):
            cls(config)
        return "builds"
    except SoftTimeout:
        return "timeout"
    except Exception as e:  # noqa: BLE001
        return f"fails too: {_first_line(e)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _tie_setting(model):
    """The tie_word_embeddings the model was built with (its text config's, for multimodal wrappers), or None."""
    try:
        cfg = model.config.get_text_config(decoder=True)
    except Exception:  # noqa: BLE001
        cfg = model.config
    value = getattr(cfg, "tie_word_embeddings", None)
    return value if isinstance(value, bool) else None


def _head_tied(model):
    """Whether the output embeddings' weight is the input embeddings' weight (None: the class has no such pair, or
    the head's weight is shared with some other parameter)."""
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except Exception:  # noqa: BLE001
        return None
    w_in, w_out = getattr(inp, "weight", None), getattr(out, "weight", None)
    if w_in is None or w_out is None:
        return None
    if w_in is w_out:
        return True
    # untied only if the head's weight is shared with nothing (t5gemma ties it to the decoder's embedding, which
    # get_input_embeddings does not return)
    shared = sum(1 for _, p in model.named_parameters(remove_duplicate=False) if p is w_out)
    return False if shared == 1 else None


def _head_param(model):
    """The output embeddings' weight by its module's name (``output_projection.weight``), or None."""
    try:
        out = model.get_output_embeddings()
    except Exception:  # noqa: BLE001
        return None
    if out is None or getattr(out, "weight", None) is None:
        return None
    return next((f"{name}.weight" for name, mod in model.named_modules() if mod is out), None)


def compare(res: dict, model, folder: Path, audit) -> None:
    # ---- oracles from the instantiated model
    params_dup = dict(model.named_parameters(remove_duplicate=False))
    params = dict(model.named_parameters())
    buffers_all = dict(model.named_buffers(remove_duplicate=False))
    res["params_oracle"] = sum(p.numel() for p in model.parameters())
    biases = {n: p for n, p in params.items() if p.dim() == 1 and n.endswith("bias")}
    res["bias_oracle"] = [len(biases), sum(p.numel() for p in biases.values())]
    by_id: dict[int, list[str]] = defaultdict(list)
    for n, p in params_dup.items():
        by_id[id(p)].append(n)
    oracle_groups = {frozenset(v) for v in by_id.values() if len(v) > 1}
    group_of = {n: g for g in oracle_groups for n in g}
    try:
        res["non_embedding_oracle"] = model.num_parameters(exclude_embeddings=True)
    except Exception:  # noqa: BLE001
        res["non_embedding_oracle"] = None

    # ---- oracles from the files
    files = _file_tensors(folder)
    res["stored_oracle"] = sum(n for _, _, n in files.values())
    to_model, conversions = _name_mapper(model)
    if conversions:
        res["conversions"] = conversions
    model_name = {k: to_model(k) for k in files}
    renamed = {k: v for k, v in model_name.items() if k != v}
    if renamed:
        res["renamed_keys"] = len(renamed)

    def oracle_kind(key: str) -> str:
        mn = model_name[key]
        if mn in params_dup:
            p = params_dup[mn]
            return "bias" if p.dim() == 1 and mn.endswith("bias") and len(files[key][1]) == 1 else "weight"
        if mn in buffers_all:
            return "buffer"
        return "unmapped"

    okind = {k: oracle_kind(k) for k in files}
    oracle_buffers = {k for k, v in okind.items() if v == "buffer"}
    # facts for ckptcount's transformers table (scripts/make_transformers_table.py): the floating-point persistent
    # buffers and the parameters, by the names the file holds; and whether the class ties its output head to the
    # input embedding when the config asks for it
    res["file_buffers"] = sorted(k for k in oracle_buffers if buffers_all[model_name[k]].is_floating_point())
    res["file_parameters"] = sorted(k for k, v in okind.items() if v in ("weight", "bias"))
    res["tie_word_embeddings"] = _tie_setting(model)
    res["head_tied"] = _head_tied(model)
    res["head_param"] = _head_param(model)
    # biases whose file name does not say so, and 1-D "...bias" file names the model does not call a bias
    res["bias_exceptions"] = {
        "bias": sorted(k for k, v in okind.items() if v == "bias" and not k.endswith("bias")),
        "weight": sorted(k for k, v in okind.items() if v == "weight" and k.endswith("bias") and len(files[k][1]) == 1),
    }
    # what num_parameters(exclude_embeddings=True) subtracts: the weight of every nn.Embedding module, by the name the
    # file holds it under (the model's name when the file does not hold it, e.g. a tied duplicate)
    import torch.nn as nn

    embedding_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    in_file = {k for k, mn in model_name.items() if mn in embedding_weights}  # Molmo2: two file tensors, one table
    held = {model_name[k] for k in in_file}
    res["file_embeddings"] = sorted(in_file | {n for n in embedding_weights if n in params_dup and n not in held})
    res["buffer_oracle"] = [len(oracle_buffers), sum(files[k][2] for k in oracle_buffers)]
    unmapped = sorted(k for k, v in okind.items() if v == "unmapped")
    # parameters the file does not hold under any of their names (dropped by save_pretrained, not a tie)
    stored_models = set(model_name.values())
    not_saved = []
    for ident, names in by_id.items():
        if not any(n in stored_models for n in names):
            p = params_dup[names[0]]
            not_saved.append({"names": sorted(names), "shape": list(p.shape), "dtype": _dt(p.dtype), "elements": p.numel()})
    # ---- ckptcount
    try:
        r = audit(str(folder))
    except Exception as e:  # noqa: BLE001
        res["status"] = "MISMATCH"
        res["problems"] = [f"ckptcount raised {_first_line(e)}"]
        return
    c = r.counts
    res["params_ck"] = c.parameters
    res["bias_ck"] = [c.biases.tensors, c.biases.elements]
    res["stored_ck"] = c.stored_elements
    res["buffer_ck"] = [sum(b.tensors for b in c.buffers), c.buffer_elements]
    res["non_embedding_ck"] = c.non_embedding["transformers"]
    ck = {x.tensor.name: x for x in r.classified}

    problems: list[str] = []
    if c.parameters != res["params_oracle"]:
        problems.append(f"parameters: ckptcount {c.parameters:,} vs model {res['params_oracle']:,} ({c.parameters - res['params_oracle']:+,})")
    # biases as the file holds them: a converter may fuse q/k/v biases into one stored qkv bias (same elements)
    file_biases = [k for k, v in okind.items() if v == "bias"]
    res["bias_file_oracle"] = [len(file_biases), sum(files[k][2] for k in file_biases)]
    notes: list[str] = []
    if res["bias_ck"] != res["bias_oracle"]:
        if res["bias_ck"][1] == res["bias_oracle"][1] and res["bias_ck"][0] == res["bias_file_oracle"][0] and conversions:
            notes.append(f"bias tensors: {res['bias_ck'][0]} stored vs {res['bias_oracle'][0]} in the model (save_pretrained's conversion fuses them; elements equal)")
        else:
            problems.append(f"biases (tensors, elements): ckptcount {tuple(res['bias_ck'])} vs model {tuple(res['bias_oracle'])}")
    if c.stored_elements != res["stored_oracle"]:
        problems.append(f"stored elements: ckptcount {c.stored_elements:,} vs files {res['stored_oracle']:,}")
    ck_buffers = {n for n, x in ck.items() if x.kind == "buffer"}
    if ck_buffers != oracle_buffers:
        problems.append(f"buffers: ckptcount {len(ck_buffers)} tensors vs model {len(oracle_buffers)}")
    missing = sorted(set(files) - set(ck))
    if missing:
        problems.append(f"{len(missing)} stored tensors not in ckptcount's report: {missing[:5]}")

    # ---- each stored tensor: weight / bias / buffer
    wrong = []
    for k, kind in okind.items():
        x = ck.get(k)
        if x is None or kind == "unmapped" or x.kind == kind:
            continue
        dtype, shape, _ = files[k]
        how = {
            ("buffer", "weight"): "buffer counted as parameter (weight)",
            ("buffer", "bias"): "buffer counted as parameter (bias)",
            ("weight", "buffer"): "parameter (weight) counted as buffer",
            ("bias", "buffer"): "parameter (bias) counted as buffer",
            ("bias", "weight"): "bias counted as weight",
            ("weight", "bias"): "weight counted as bias",
        }[(kind, x.kind)]
        entry = {"name": k, "shape": shape, "dtype": dtype, "how": how, "ck_reason": x.reason}
        if model_name[k] != k:
            entry["model_name"] = model_name[k]
        if kind == "buffer":
            b = buffers_all[model_name[k]]
            entry["buffer_dtype"] = _dt(b.dtype)
        wrong.append(entry)
    if wrong:
        problems.append(f"{len(wrong)} stored tensors misclassified")
    res["misclassified"] = wrong
    if unmapped:
        res["unmapped"] = [{"name": k, "shape": files[k][1], "dtype": files[k][0], "ck_kind": ck[k].kind if k in ck else None} for k in unmapped]
        notes.append(f"{len(unmapped)} stored tensors the oracle could not map to a model name (converted by save_pretrained)")
    if not_saved:
        res["not_saved"] = not_saved
        if not conversions:  # with a converter these are fused into another stored tensor (qkv), not missing
            problems.append(f"{len(not_saved)} model parameters not in the file")

    # ---- ties: every name ckptcount groups, mapped to model names; then the stored members only
    ck_groups = {frozenset(to_model(n) for n in g.names) for g in r.ties if g.counted_once}
    candidates = [list(g.names) for g in r.ties if not g.counted_once]
    if candidates:
        res["tie_candidates"] = candidates
    # what decides the count: which stored names are one tensor
    oracle_stored = set()
    for g in oracle_groups:
        keys = frozenset(k for k, mn in model_name.items() if mn in g)
        if len(keys) > 1:
            oracle_stored.add(keys)
    ck_stored = {frozenset(g.stored) for g in r.ties if g.counted_once and len(g.stored) > 1}
    tie_missed = []
    tie_spurious = []
    for g in oracle_stored - ck_stored:
        tie_missed.append({"names": sorted(g), "stored": True, "shapes": {k: files[k][1] for k in g}})
    for g in ck_stored - oracle_stored:
        ev = next(t.evidence for t in r.ties if frozenset(t.stored) == g)
        tie_spurious.append({"names": sorted(g), "stored": True, "shapes": {k: files[k][1] for k in g}, "evidence": ev})
    # naming only (members not in the file): no effect on the count, but the report names them
    counted = {frozenset(model_name[k] for k in m["names"]) for m in tie_missed + tie_spurious}
    for g in oracle_groups - ck_groups:
        if not any(h <= g for h in counted):
            stored_members = sorted(k for k, mn in model_name.items() if mn in g)
            tie_missed.append({"names": sorted(g), "stored": False, "stored_members": stored_members})
    for g in ck_groups - oracle_groups:
        if not any(h <= g for h in counted):
            ev = next(t.evidence for t in r.ties if t.counted_once and frozenset(to_model(n) for n in t.names) == g)
            real = {n: sorted(group_of[n]) for n in g if n in group_of}
            tie_spurious.append({"names": sorted(g), "stored": False, "evidence": ev, "oracle_groups_of_members": real})
    if any(m["stored"] for m in tie_missed + tie_spurious):
        # second opinion on stored duplicates: what the loader itself does with this folder
        try:
            import torch

            with torch.no_grad():
                loaded = type(model).from_pretrained(str(folder))
            shared: dict[int, list[str]] = defaultdict(list)
            for n, p in loaded.named_parameters(remove_duplicate=False):
                shared[id(p)].append(n)
            loaded_groups = [sorted(v) for v in shared.values() if len(v) > 1]
            for m in tie_missed + tie_spurious:
                if m["stored"]:
                    mns = {model_name[k] for k in m["names"]}
                    m["from_pretrained_shares_them"] = any(mns <= set(g) for g in loaded_groups)
            del loaded
        except Exception as e:  # noqa: BLE001
            res["reload_error"] = _first_line(e)
    if tie_missed:
        res["tie_missed"] = tie_missed
        problems.append(f"{len(tie_missed)} tie groups missed")
    if tie_spurious:
        res["tie_spurious"] = tie_spurious
        problems.append(f"{len(tie_spurious)} spurious tie groups")
    res["oracle_ties"] = sorted(sorted(g) for g in oracle_groups)
    res["ck_ties"] = [{"names": list(g.names), "stored": list(g.stored), "counted_once": g.counted_once} for g in r.ties]
    res["problems"] = problems
    res["notes"] = notes
    res["status"] = "MISMATCH" if problems else "match"
    # "counts": some number or some tensor's kind is wrong; "tie names": only the names in tie groups differ from the
    # model's (members not in the file, whose names ckptcount guesses or does not know): no count is affected
    if problems:
        naming = all("tie groups" in p for p in problems) and not any(m["stored"] for m in tie_missed + tie_spurious)
        res["severity"] = "tie names" if naming else "counts"


# ---------------------------------------------------------------------------------------------------------------------
# worker: every model of its list, one after the other, in this one process


def worker(args) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    items = json.loads(Path(args.worker).read_text())
    workdir = Path(args.workdir)
    progress = workdir / "progress"
    for item in items:
        progress.write_text(json.dumps({"type": item["type"], "t": time.time()}))
        try:
            res = run_one(item, workdir, args.timeout, args.max_params, args.keep_all)
        except BaseException as e:  # noqa: BLE001  never stop the sweep (KeyboardInterrupt: stop)
            if isinstance(e, KeyboardInterrupt):
                raise
            res = dict(item, status="error", reason=f"sweep: {_first_line(e)}", traceback=traceback.format_exc()[-2000:])
        with open(args.results, "a") as f:
            f.write(json.dumps(res, default=str) + "\n")
        import gc

        gc.collect()
    progress.write_text("")


# ---------------------------------------------------------------------------------------------------------------------
# parent: start the worker, watch it, restart it after a crash or a hang, print as results come


def _read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def line_for(r: dict) -> str:
    t = r.get("t_total") or r.get("t_build")
    when = f" [{t:.1f}s]" if isinstance(t, (int, float)) else ""
    head = f"{r['type']:<34} {r['class']:<44}"
    if r["status"] == "match":
        ties = f", ties {len(r.get('oracle_ties', []))}" if r.get("oracle_ties") else ""
        return f"{head} match: {r['params_oracle']:,} params, {r['buffer_oracle'][0]} buffers{ties}{when}"
    if r["status"] == "MISMATCH":
        return f"{head} MISMATCH ({r.get('severity')}): {'; '.join(r.get('problems', []))}{when}"
    dflt = f" [default config {r['default_config']}]" if r.get("default_config") else ""
    return f"{head} {r['status']}: {r.get('reason')}{dflt}{when}"


def details(r: dict) -> list[str]:
    out = []
    for w in r.get("misclassified", []):
        extra = f" (model name {w['model_name']})" if "model_name" in w else ""
        out.append(f"    {w['how']}: {w['name']} {w['shape']} {w['dtype']}{extra}; ckptcount rule: {w['ck_reason']}")
    for u in r.get("unmapped", []):
        out.append(f"    unmapped file tensor: {u['name']} {u['shape']} {u['dtype']} (ckptcount: {u['ck_kind']})")
    for m in r.get("tie_missed", []):
        where = "stored duplicates" if m["stored"] else f"not all stored; stored members {m.get('stored_members')}"
        if "from_pretrained_shares_them" in m:
            where += f"; after from_pretrained shared: {m['from_pretrained_shares_them']}"
        out.append(f"    tie missed ({where}): {' = '.join(m['names'])}")
    for s in r.get("tie_spurious", []):
        where = "stored" if s["stored"] else f"names; real groups of members {s.get('oracle_groups_of_members')}"
        if "from_pretrained_shares_them" in s:
            where += f"; after from_pretrained shared: {s['from_pretrained_shares_them']}"
        out.append(f"    spurious tie ({where}): {' = '.join(s['names'])}  [{s.get('evidence')}]")
    if not r.get("conversions"):
        for n in r.get("not_saved", []):
            out.append(f"    parameter not in the file: {n['names']} {n['shape']} {n['dtype']}")
    for n in r.get("notes", []):
        out.append(f"    note: {n}")
    if r["status"] == "error" and r.get("traceback"):
        out.append("    " + r["traceback"].strip().splitlines()[-1])
    return out


def skip_category(reason: str) -> str:
    reason = reason or ""
    if reason.startswith("import"):
        return "class not importable"
    if reason.startswith("too big"):
        return "too big (> --max-params even at the smallest config that builds)"
    if reason.startswith("timeout"):
        return "time guard"
    if reason.startswith("worker"):
        return "worker crashed/hung"
    stage, _, rest = reason.partition(": ")
    return f"{stage.split(' (')[0]} failed: {rest.split(':')[0]}"


def summary(results: list[dict], elapsed: float, verbose: bool) -> None:
    by = Counter(r["status"] for r in results)
    built = sum(1 for r in results if r["status"] in ("match", "MISMATCH", "error"))
    print()
    sev = Counter(r.get("severity") for r in results if r["status"] == "MISMATCH")
    print(f"tried {len(results)}, built {built}, matched {by['match']}, mismatched {by['MISMATCH']} "
          f"({sev['counts']} with wrong counts or kinds, {sev['tie names']} with tie names only), "
          f"skipped {by['skipped']}, errors in the sweep itself {by['error']}  ({elapsed:.0f} s)")
    cats = Counter(
        skip_category(r.get("reason"))
        + ("" if not r.get("default_config") else " (default config builds)" if r["default_config"] == "builds" else " (default config fails too)")
        for r in results if r["status"] == "skipped"
    )
    if cats:
        print("skipped by cause:")
        for k, v in cats.most_common():
            print(f"  {v:4d}  {k}")
    mism = [r for r in results if r["status"] == "MISMATCH"]
    if mism:
        print("\nmismatches:")
        for r in mism:
            print(line_for(r))
            for d in details(r):
                print(d)
        hows = Counter()
        for r in mism:
            for w in r.get("misclassified", []):
                hows[w["how"]] += 1
        if hows:
            print("\nmisclassified tensors by kind of error:", dict(hows))
    ne = [r for r in results if r["status"] in ("match", "MISMATCH") and r.get("non_embedding_oracle") is not None
          and r.get("non_embedding_ck") is not None and r["non_embedding_oracle"] != r["non_embedding_ck"]]
    print(f"\n(info, not part of the status) non-embedding count differs from model.num_parameters(exclude_embeddings=True) in {len(ne)} of {built} built models")
    if verbose and ne:
        for r in ne:
            print(f"  {r['type']}: ckptcount {r['non_embedding_ck']:,} vs transformers {r['non_embedding_oracle']:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--limit", type=int, help="the first N types only")
    ap.add_argument("--mappings", default="causal,masked,seq2seq,base", help="which auto mappings, in priority order (causal,masked,seq2seq,base)")
    ap.add_argument("--timeout", type=float, default=20.0, help="soft per-model guard on config+build+save, seconds")
    ap.add_argument("--hard-timeout", type=float, default=180.0, help="kill the worker when one model takes this long")
    ap.add_argument("--max-params", type=int, default=100_000_000, help="skip models larger than this even at the smallest config that builds")
    ap.add_argument("--workdir", default="/tmp/ckptcount_sweep")
    ap.add_argument("--results", help="JSON lines, one per model (default WORKDIR/results.jsonl)")
    ap.add_argument("--keep-all", action="store_true", help="keep every saved model, not only mismatching ones")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the details of each mismatch as it comes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    args.results = args.results or str(workdir / "results.jsonl")
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    items = plan([m.strip() for m in args.mappings.split(",") if m.strip()])
    if args.only:
        wanted = [t.strip() for t in args.only.split(",") if t.strip()]
        known = {i["type"]: i for i in items}
        missing = [t for t in wanted if t not in known]
        if missing:
            print(f"not in the selected mappings: {', '.join(missing)}", file=sys.stderr)
        items = [known[t] for t in wanted if t in known]
    if args.limit:
        items = items[: args.limit]
    workdir.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    results_path.unlink(missing_ok=True)
    import transformers

    print(f"transformers {transformers.__version__}: {len(items)} model types; results in {results_path}", flush=True)
    t0 = time.time()
    done: list[dict] = []
    todo = list(items)
    log = open(workdir / "worker.log", "a")
    while todo:
        queue = workdir / "queue.json"
        queue.write_text(json.dumps(todo))
        progress = workdir / "progress"
        progress.write_text("")
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(queue), "--workdir", str(workdir),
                "--results", str(results_path), "--timeout", str(args.timeout), "--max-params", str(args.max_params)]
        if args.keep_all:
            argv.append("--keep-all")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        killed = None
        while True:
            rc = proc.poll()
            results = _read_results(results_path)
            for r in results[len(done):]:
                done.append(r)
                print(line_for(r), flush=True)
                if args.verbose:
                    for d in details(r):
                        print(d, flush=True)
            if rc is not None:
                break
            try:
                p = json.loads(progress.read_text() or "null")
            except ValueError:
                p = None
            if p and time.time() - p["t"] > args.hard_timeout:
                killed = p["type"]
                proc.kill()  # the worker we started, by its own handle
                proc.wait()
            time.sleep(0.3)
        finished = {r["type"] for r in done}
        todo = [i for i in todo if i["type"] not in finished]
        if todo:  # the worker died (or was killed) on todo[0]
            bad = todo.pop(0)
            why = f"worker killed after {args.hard_timeout:g} s" if killed == bad["type"] else f"worker crashed (exit {rc})"
            r = dict(bad, status="skipped", reason=why)
            with open(results_path, "a") as f:
                f.write(json.dumps(r) + "\n")
            done.append(r)
            print(line_for(r), flush=True)
    log.close()
    summary(done, time.time() - t0, args.verbose)


if __name__ == "__main__":
    main()
