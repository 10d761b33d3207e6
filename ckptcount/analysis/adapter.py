"""PEFT adapters: what ``adapter_config.json`` says (type, rank, alpha, target modules, trained extras, base model),
what the adapter's tensors are, and, with the base model's report, the adapter's share of it and whether every
adapted module exists in the base with shapes that fit.

Pure: the settings (a dict), the adapter's Report and optionally the base's Report in, a summary dict and findings
out. The adapter's parameters are its tensors, all trainable: LoRA's A and B (and DoRA's magnitude vectors), IA3's
scaling vectors, LoHa's and LoKr's factors, and full copies of the ``modules_to_save``; peft's
``get_nb_trainable_parameters`` counts the same.
"""

from __future__ import annotations

import re
from typing import Mapping

from ..records import Finding, Report, TensorRecord

PREFIX = "base_model.model."  # peft's PeftModel wraps the base model: its saved names start with this
# the tensors of each PEFT method, by the suffix after the adapted module's name (peft's tuners, *_layer.py)
ROLES = re.compile(
    r"\.(?P<role>lora_A|lora_B|lora_E|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|ia3_l|hada_w[12]_[ab]|hada_t[12]"
    r"|lokr_w[12](?:_[ab])?|lokr_t2|oft_r|oft_s|boft_R|boft_s|vera_lambda_[bd]|fourierft_spectrum|ln_tuning_layers)"
    r"(?:\.(?:weight|bias|default))?$"
)


def settings(config: Mapping) -> dict:
    """The adapter's settings as the report shows them (None where the config says nothing)."""

    def listed(v):
        return sorted(v) if isinstance(v, (list, tuple, set)) else v

    peft_type = config.get("peft_type")
    return {
        "type": peft_type if isinstance(peft_type, str) else None,
        "rank": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "dora": bool(config.get("use_dora")) if "use_dora" in config else None,
        "target_modules": listed(config.get("target_modules")),
        "modules_to_save": listed(config.get("modules_to_save")),
        "base_model": config.get("base_model_name_or_path") if isinstance(config.get("base_model_name_or_path"), str) else None,
        "task_type": config.get("task_type"),
    }


def module_of(name: str) -> tuple[str, str | None]:
    """(the base model's module an adapter tensor belongs to, its role), e.g. ``model.layers.0.self_attn.q_proj``
    and ``lora_A``; a tensor with no adapter suffix is a trained copy of a base tensor (``modules_to_save``): its own
    name and None."""
    bare = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    m = ROLES.search(bare)
    if m is None:
        bare = re.sub(r"\.modules_to_save\.[^.]+(?=\.)", "", bare)  # peft's in-memory name, if a tool saved it
        return bare, None
    return bare[: m.start()], m["role"]


def summarize(config: Mapping, adapter: Report, base: Report | None = None, base_target: str | None = None) -> tuple[dict, list[Finding]]:
    """The adapter summary for the report, and the findings of the check against the base (with a base)."""
    info = settings(config)
    roles: dict[str, list[int]] = {}
    modules: dict[str, dict[str, TensorRecord]] = {}
    copies: list[TensorRecord] = []
    for t in adapter.checkpoint.tensors:
        module, role = module_of(t.name)
        key = role or "modules_to_save"
        acc = roles.setdefault(key, [0, 0])
        acc[0] += 1
        acc[1] += t.numel
        if role is None:
            copies.append(t._replace(name=module))
        else:
            modules.setdefault(module, {})[role] = t
    info["parameters"] = adapter.counts.parameters
    info["adapted_modules"] = len(modules)
    info["tensors_by_role"] = {k: {"tensors": v[0], "elements": v[1]} for k, v in sorted(roles.items())}
    findings: list[Finding] = []
    if base is not None:
        n = base.counts.parameters
        info["base"] = {
            "target": base_target,
            "parameters": n,
            "share_percent": round(100 * adapter.counts.parameters / n, 4) if n else None,
        }
        shapes = {t.name: t.shape for t in base.checkpoint.tensors}
        findings = check(modules, copies, shapes, base_target or "the base")
        info["base"]["checked_modules"] = len(modules) + len(copies)
        info["base"]["mismatches"] = len(findings)
    return info, findings


def check(modules: Mapping[str, Mapping[str, TensorRecord]], copies: list[TensorRecord], shapes: Mapping[str, tuple], base: str) -> list[Finding]:
    """Every adapted module in the base, with a weight whose shape the adapter's factors fit; every trained copy
    the shape of the base tensor it replaces."""
    out: list[Finding] = []
    for module, parts in sorted(modules.items()):
        weight = shapes.get(f"{module}.weight")
        if weight is None:
            out.append(Finding("adapter-base-mismatch", f"{module}: adapted, but {base} has no {module}.weight"))
            continue
        expected = _expected(parts)
        if expected is not None and not _fits(expected, weight):
            want = "x".join("?" if d is None else str(d) for d in expected)
            out.append(Finding("adapter-base-mismatch", f"{module}: the adapter fits a [{want}] weight but {base}'s {module}.weight is {list(weight)}"))
    for t in copies:
        have = shapes.get(t.name)
        if have is None:
            out.append(Finding("adapter-base-mismatch", f"{t.name}: a trained copy (modules_to_save) of a tensor {base} does not have"))
        elif tuple(have) != tuple(t.shape):
            out.append(Finding("adapter-base-mismatch", f"{t.name}: the adapter's copy is {list(t.shape)} but {base}'s is {list(have)}"))
    return out


def _expected(parts: Mapping[str, TensorRecord]) -> tuple | None:
    """The (out, in) a base weight must have for these factors; None for a dimension they do not fix."""
    get = parts.get
    if get("lora_A") is not None and get("lora_B") is not None:  # A [r, in, ...], B [out, r, ...]
        return (get("lora_B").shape[0], get("lora_A").shape[1] if len(get("lora_A").shape) > 1 else None)
    if get("lora_embedding_A") is not None and get("lora_embedding_B") is not None:  # A [r, V], B [d, r]: weight [V, d]
        return (get("lora_embedding_A").shape[-1], get("lora_embedding_B").shape[0])
    if get("hada_w1_a") is not None and get("hada_w1_b") is not None:  # w1_a [out, r], w1_b [r, in]
        return (get("hada_w1_a").shape[0], get("hada_w1_b").shape[-1])
    if get("lora_magnitude_vector") is not None:
        return (get("lora_magnitude_vector").numel, None)
    if get("ia3_l") is not None:  # [out, 1], or [1, in] on feed-forward layers
        shape = get("ia3_l").shape
        return (shape[0], None) if len(shape) == 2 and shape[1] == 1 else (None, shape[-1])
    return None


def _fits(expected: tuple, weight: tuple) -> bool:
    """Whether a base weight has those dimensions, as stored ([out, in]) or transposed (GPT-2's Conv1D: [in, out])."""
    if len(weight) < 2:
        return expected[0] in (None, weight[0] if weight else None) and expected[1] is None
    out_, in_ = weight[0], weight[1]
    ok = all(e is None or e == w for e, w in zip(expected, (out_, in_)))
    flipped = all(e is None or e == w for e, w in zip(expected, (in_, out_)))
    return ok or flipped
