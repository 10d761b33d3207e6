"""How the tensor names of two checkpoints line up: as stored, with a ``model.``-style prefix removed, or through the
GGUF <-> transformers renaming. A pure function of two sets of names; it says which mapping it used.

The GGUF table is hand-written in the style of llama.cpp's gguf-py ``tensor_mapping.py`` (each row: the GGUF name,
the transformers names it is converted from, and the families it was written for), so the library does not need the
``gguf`` package; tests/test_diff.py checks every row against ``gguf.get_tensor_name_map`` itself. Only the
architectures below are mapped; a GGUF of another architecture is compared by its stored names, and the mapping says
so. Rows map names only: a conversion that transposes a tensor (GPT-2's Conv1D weights, stored [in, out] by
transformers and [out, in] by ``convert_hf_to_gguf.py``) shows as a transposed shape change, and stacked MoE experts
(``ffn_*_exps``, one tensor for all experts) have no row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (GGUF stem, transformers stems), ``{bid}`` the block number; the suffix (.weight / .bias) is kept as it is.
# Transformers stems are written without the model's prefix (``model.`` in LlamaForCausalLM, ``transformer.`` in
# GPT2LMHeadModel): a name is tried as stored, then without its first component when that is one of PREFIXES.
LLAMA_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token_embd", ("embed_tokens",)),  # llama, mistral, qwen2, qwen3
    ("output_norm", ("norm",)),  # llama, mistral, qwen2, qwen3
    ("output", ("lm_head",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.attn_norm", ("layers.{bid}.input_layernorm",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.attn_q", ("layers.{bid}.self_attn.q_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.attn_k", ("layers.{bid}.self_attn.k_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.attn_v", ("layers.{bid}.self_attn.v_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.attn_output", ("layers.{bid}.self_attn.o_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.ffn_norm", ("layers.{bid}.post_attention_layernorm",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.ffn_gate", ("layers.{bid}.mlp.gate_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.ffn_up", ("layers.{bid}.mlp.up_proj",)),  # llama, mistral, qwen2, qwen3
    ("blk.{bid}.ffn_down", ("layers.{bid}.mlp.down_proj",)),  # llama, mistral, qwen2, qwen3
)
QWEN3_ROWS = LLAMA_ROWS + (
    ("blk.{bid}.attn_q_norm", ("layers.{bid}.self_attn.q_norm",)),  # qwen3
    ("blk.{bid}.attn_k_norm", ("layers.{bid}.self_attn.k_norm",)),  # qwen3
)
GPT2_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token_embd", ("wte",)),  # gpt2
    ("position_embd", ("wpe",)),  # gpt2
    ("output_norm", ("ln_f",)),  # gpt2
    ("output", ("lm_head",)),  # gpt2
    ("blk.{bid}.attn_norm", ("h.{bid}.ln_1",)),  # gpt2
    ("blk.{bid}.attn_qkv", ("h.{bid}.attn.c_attn",)),  # gpt2 (Conv1D: transposed by the converter)
    ("blk.{bid}.attn_output", ("h.{bid}.attn.c_proj",)),  # gpt2 (Conv1D: transposed by the converter)
    ("blk.{bid}.ffn_norm", ("h.{bid}.ln_2",)),  # gpt2
    ("blk.{bid}.ffn_up", ("h.{bid}.mlp.c_fc",)),  # gpt2 (Conv1D: transposed by the converter)
    ("blk.{bid}.ffn_down", ("h.{bid}.mlp.c_proj",)),  # gpt2 (Conv1D: transposed by the converter)
)
# general.architecture -> rows
GGUF_TABLES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "llama": LLAMA_ROWS,
    "mistral": LLAMA_ROWS,
    "qwen2": LLAMA_ROWS,
    "qwen3": QWEN3_ROWS,
    "gpt2": GPT2_ROWS,
}
PREFIXES = ("model", "transformer")  # the base model's attribute in *ForCausalLM (llama family; gpt2)

IDENTITY = "matched as stored"


@dataclass(frozen=True)
class Alignment:
    """Where each name of A and of B lands in one shared key space, and how that was decided.

    ``key_a(name)`` / ``key_b(name)`` give a name's key (stored names and tie-group names alike); two tensors match
    when their keys are equal."""

    description: str
    key_a: Callable[[str], str]
    key_b: Callable[[str], str]


def _same(name: str) -> str:
    return name


_DIGITS = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def _compile(rows) -> dict[str, str]:
    """transformers stem pattern (digits as ``{bid}``) -> GGUF stem pattern."""
    out: dict[str, str] = {}
    for gguf_stem, hf_stems in rows:
        for hf in hf_stems:
            out[hf] = gguf_stem
    return out


def _split(name: str) -> tuple[str, str]:
    stem, dot, last = name.rpartition(".")
    return (stem, "." + last) if dot and last in ("weight", "bias") else (name, "")


def to_gguf(name: str, arch: str) -> str | None:
    """The GGUF name ``convert_hf_to_gguf.py`` gives a transformers name, by ``arch``'s rows; None when no row has it."""
    rows = GGUF_TABLES.get(arch)
    if rows is None:
        return None
    table = _compile(rows)
    stem, suffix = _split(name)
    candidates = [stem]
    first, dot, rest = stem.partition(".")
    if dot and first in PREFIXES:
        candidates.append(rest)
    for cand in candidates:
        numbers = _DIGITS.findall(cand)
        pattern = _DIGITS.sub("{bid}", cand)
        gguf = table.get(pattern)
        if gguf is not None and len(numbers) == pattern.count("{bid}") <= 1:
            return gguf.replace("{bid}", numbers[0]) + suffix if numbers else gguf + suffix
    return None


def align(names_a: Iterable[str], names_b: Iterable[str], *, gguf_a: str | None = None, gguf_b: str | None = None, is_gguf_a: bool = False, is_gguf_b: bool = False) -> Alignment:
    """How to match A's names with B's. ``names_a`` / ``names_b``: every name of each side, the stored ones and those
    of its tie groups (a tied head that is not stored must be renamed like the others).

    * One side GGUF (``is_gguf_*``, its ``general.architecture`` in ``gguf_*``), the other not: the other side's names
      are renamed to GGUF names by the architecture's rows, when the architecture has rows.
    * Otherwise names are matched as stored, unless removing one leading component that most names of one side
      share (``model.``, ``transformer.``, ``bert.`` ...) matches strictly more names without making two names one.
    """
    names_a, names_b = set(names_a), set(names_b)
    if is_gguf_a != is_gguf_b:
        arch = gguf_a if is_gguf_a else gguf_b
        if arch not in GGUF_TABLES:
            return Alignment(f"{IDENTITY} (GGUF architecture {arch!r} has no name table here)", _same, _same)
        other = names_b if is_gguf_a else names_a
        mapping = _rename(other, lambda n: to_gguf(n, arch))
        how = f"matched through the GGUF renaming: transformers names -> GGUF names ({arch} rows of ckptcount.diff.names, as gguf-py's tensor_mapping maps them)"
        key = _keyed(mapping)
        return Alignment(how, _same, key) if is_gguf_a else Alignment(how, key, _same)

    best = (len(names_a & names_b), IDENTITY, _same, _same)
    for side, names, others in (("A", names_a, names_b), ("B", names_b, names_a)):
        for prefix in _common_prefixes(names):
            mapping = _rename(names, lambda n, p=prefix: n[len(p):] if n.startswith(p) else None)
            hits = sum(1 for n in names if mapping.get(n, n) in others)
            if hits > best[0]:
                key = _keyed(mapping)
                what = f"matched with the prefix {prefix!r} removed from {side}'s names"
                best = (hits, what, key, _same) if side == "A" else (hits, what, _same, key)
    return Alignment(*best[1:])


def _common_prefixes(names: set[str]) -> list[str]:
    """Leading components (``model.``) that begin at least half of the names, most common first."""
    counts: dict[str, int] = {}
    for n in names:
        first, dot, _ = n.partition(".")
        if dot:
            counts[first + "."] = counts.get(first + ".", 0) + 1
    return sorted((p for p, c in counts.items() if 2 * c >= len(names)), key=lambda p: (-counts[p], p))


def _rename(names: set[str], rule: Callable[[str], str | None]) -> dict[str, str]:
    """name -> new name for the names ``rule`` renames, leaving out any two that would land on one name (or on a
    name already stored as it is): those keep their stored names."""
    renamed = {n: new for n in names if (new := rule(n)) is not None and new != n}
    landing: dict[str, list[str]] = {}
    for n, new in renamed.items():
        landing.setdefault(new, []).append(n)
    kept = set(names) - set(renamed)
    return {n: new for n, new in renamed.items() if len(landing[new]) == 1 and new not in kept}


def _keyed(mapping: dict[str, str]) -> Callable[[str], str]:
    """A key function: the mapping's new name for a name it renames, else the name itself."""
    return lambda n: mapping.get(n, n)
