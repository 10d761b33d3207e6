"""Mixture of experts: total parameters vs parameters active per token.

Routed experts are found by name, in three layouts:

* one module per expert: ``...experts.<e>.w1.weight`` (Mixtral), ``...mlp.experts.<e>.gate_proj.weight`` (Qwen2-MoE,
  DeepSeek), the expert index after ``experts.``;
* fused experts: ``...mlp.experts.gate_up_proj`` [E, ...] (transformers 5 in memory, gpt-oss ``*_blocks``/``*_bias``);
* GGUF: ``blk.N.ffn_{gate,up,down,gate_up}_exps.weight`` [E, ...].

Shared experts (``shared_expert``/``shared_experts``, GGUF ``*_shexp``) and routers (``gate``, ``router``,
``ffn_gate_inp``) run for every token and count as dense. The number of experts E and experts per token k come from
the config (``num_local_experts`` | ``num_experts`` | ``n_routed_experts``, ``num_experts_per_tok``; also under
``text_config``) or GGUF keys (``{arch}.expert_count``, ``{arch}.expert_used_count``); E is cross-checked against
the names. Per MoE layer with routed-expert parameters R_l, equal-sized experts, each token uses k of E:

    active = total - sum_l R_l x (E - k) / E
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Mapping

from ..formats.gguf import kv_value
from ..records import BUFFER, Checkpoint, Classification, Classified, Counts, TieGroup
from .count import counted_names

_ZERO = bytes.maketrans(b"123456789", b"000000000")

PER_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
FUSED = re.compile(r"(?:^|\.)experts\.(?!\d+\.)[A-Za-z_]")
GGUF_EXPERTS = re.compile(r"(?:^|\.)ffn_[a-z_]+_exps(?:\.|$)")

E_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
K_KEYS = ("num_experts_per_tok", "moe_top_k", "num_experts_per_token", "moe_k")  # moe_k: ernie 4.5


def _config_value(config: Mapping | None, keys: tuple[str, ...]) -> tuple[int | None, str | None]:
    for scope, cfg in (("", config), ("text_config.", (config or {}).get("text_config") if isinstance(config, Mapping) else None)):
        if not isinstance(cfg, Mapping):
            continue
        for k in keys:
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v, f"config: {scope}{k}={v}"
    return None, None


def expert_kind(name: str) -> str | None:
    """'per-expert', 'fused' or 'gguf' for a routed-expert tensor name; None otherwise (shared experts included)."""
    if "shared_expert" in name or "_shexp" in name:
        return None
    if "experts." not in name and "_exps" not in name:  # every pattern below needs one of these: skip the regexes
        return None
    if PER_EXPERT.search(name):
        return "per-expert"
    if GGUF_EXPERTS.search(name):
        return "gguf"
    if FUSED.search(name):
        return "fused"
    return None


def summarize(
    checkpoint: Checkpoint, classified: tuple[Classified, ...], ties: tuple[TieGroup, ...], counts: Counts, index: Classification | None = None
) -> dict | None:
    """The ``moe`` section of a report, or None when no routed experts are stored.

    ``index``: classify's :class:`Classification` of ``classified``; only its expert candidates are looked at."""
    per_layer, indices, leading, kinds = _scan(classified, ties, index)
    if not per_layer:
        return None
    e_cfg, e_how, k_cfg, k_how, notes = _expert_numbers(checkpoint, indices, leading)
    return _section(counts.parameters, per_layer, kinds, e_cfg, e_how, k_cfg, k_how, notes)


def _scan(classified: tuple[Classified, ...], ties: tuple[TieGroup, ...], index: Classification | None) -> tuple:
    """(routed parameters per layer, expert numbers per layer, leading sizes of stacked expert tensors, layouts seen),
    each stored name counted once."""
    dropped, _ = counted_names(ties)
    per_layer: dict[str, int] = {}
    indices: dict[str, set] = {}  # layer -> expert numbers (digit strings while scanning)
    leading: set[int] = set()
    kinds: set[str] = set()
    seen: set[str] = set()
    plans: dict = {}  # expert_kind and the expert number's span, once per digit-zeroed name
    # classify's expert candidates already passed expert_kind's first test, and are parameters; with every name
    # stored once and nothing tied, each is counted as it comes (the common case: one test per tensor fewer)
    screened = index is not None
    once = screened and index.unique and not dropped
    candidates = index.experts if screened else classified
    # names equal but for their digits share one key: classify's shared object for them when it made one (its
    # identity), else the name's bytes with every digit zeroed
    shapes = index.expert_shapes if screened and len(index.expert_shapes) == len(candidates) else None
    for c, shape in zip(candidates, shapes if shapes is not None else repeat(None)):
        name = c.tensor.name
        if not screened and (("experts." not in name and "_exps" not in name) or c.kind == BUFFER):
            continue
        if not once:
            if name in dropped or name in seen:
                continue
            seen.add(name)
        key = id(shape) if shape is not None else name.encode("utf-8", "surrogatepass").translate(_ZERO)
        plan = plans.get(key)
        if plan is None:  # names equal but for their digits: same kind, expert number at the same characters
            kind = expert_kind(name)
            plan = plans[key] = (kind, PER_EXPERT.search(name).span(1) if kind == "per-expert" else None)
        kind, span = plan
        if kind is None:
            continue
        t = c.tensor
        kinds.add(kind)
        layer = c.layer or "-"  # classify already read the layer (with its encoder/decoder stack)
        per_layer[layer] = per_layer.get(layer, 0) + t.numel
        if span is not None:
            ix = indices.get(layer)
            if ix is None:
                ix = indices[layer] = set()
            ix.add(name[span[0] : span[1]])  # the digits; made numbers once per distinct string below
        elif t.shape:
            leading.add(t.shape[0])
    # expert numbers from names; one of more than 18 digits is no expert index (and past 4,300 int() would refuse it)
    numbers = {layer: {int(x) for x in strings if len(x.lstrip("0")) <= 18} for layer, strings in indices.items()}
    return per_layer, {layer: ix for layer, ix in numbers.items() if ix}, leading, kinds


def _expert_numbers(checkpoint: Checkpoint, indices: dict[str, set[int]], leading: set[int]) -> tuple:
    """(experts, how known, experts per token, how known, notes): from config.json, else the GGUF keys, else (the
    expert count only) the tensor names and shapes; disagreements are notes."""
    notes: list[str] = []
    e_cfg, e_how = _config_value(checkpoint.config, E_KEYS)
    k_cfg, k_how = _config_value(checkpoint.config, K_KEYS)
    if e_cfg is None:
        v = kv_value(checkpoint.files, "{arch}.expert_count")
        e_cfg, e_how = (v, f"gguf: {{arch}}.expert_count={v}") if isinstance(v, int) and v > 0 else (None, None)
    if k_cfg is None:
        v = kv_value(checkpoint.files, "{arch}.expert_used_count")
        k_cfg, k_how = (v, f"gguf: {{arch}}.expert_used_count={v}") if isinstance(v, int) and v > 0 else (None, None)
    from_names = {max(ix) + 1 for ix in indices.values()} | leading
    if e_cfg is None and len(from_names) == 1:
        e_cfg, e_how = from_names.pop(), "tensor names"
    elif e_cfg is not None and from_names and from_names != {e_cfg}:
        notes.append(f"config says {e_cfg} experts but the tensors hold {sorted(from_names)}")
    for layer, ix in sorted(indices.items()):
        if e_cfg is not None and len(ix) != e_cfg:
            notes.append(f"layer {layer} stores {len(ix)} of {e_cfg} experts")
    return e_cfg, e_how, k_cfg, k_how, notes


def _section(total: int, per_layer: dict[str, int], kinds: set[str], e_cfg, e_how, k_cfg, k_how, notes: list[str]) -> dict:
    """The ``moe`` dict: total, routed and dense parameters, and the active count when E and k are known."""
    routed = sum(per_layer.values())
    out: dict = {
        "total": total,
        "active": None,
        "routed_expert_parameters": routed,
        "dense_parameters": total - routed,
        "experts": e_cfg,
        "experts_per_token": k_cfg,
        "moe_layers": len(per_layer),
        "layout": "+".join(sorted(kinds)),
        "evidence": "; ".join(x for x in (e_how, k_how) if x) or "tensor names",
        "formula": None,
        "notes": notes,
    }
    if e_cfg is None or k_cfg is None:
        out["notes"].append("experts per token unknown (no num_experts_per_tok / expert_used_count): active not computed")
        return out
    if k_cfg > e_cfg:
        out["notes"].append(f"experts per token {k_cfg} exceeds the {e_cfg} experts: active not computed")
        return out
    uneven = [layer for layer, r in per_layer.items() if r % e_cfg]
    if uneven:
        out["notes"].append(f"routed parameters of layer(s) {', '.join(uneven[:5])} do not split into {e_cfg} equal experts")
    inactive = sum(r * (e_cfg - k_cfg) // e_cfg for r in per_layer.values())
    active = total - inactive
    out["active"] = active
    out["formula"] = (
        f"active = total - routed x (E - k) / E = {total:,} - {routed:,} x ({e_cfg} - {k_cfg}) / {e_cfg} = {active:,}"
    )
    return out
