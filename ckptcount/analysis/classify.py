"""Which tensors are parameters, which are weights or biases, and which component and layer each belongs to.

Role tables in the style of llama.cpp's gguf-py ``tensor_mapping.py``: the ``.weight``/``.bias`` suffix is split off
first, the layer index is the integer after ``h|layers|layer|blocks|block|blk``, and each row names the families it
was written for. Shape and dtype decide where names lie: GPT-2's ``h.N.attn.bias`` is a 4-D causal mask, not a bias.
Rows are tried in order; the first match wins.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from . import transformers_table
from ..records import (
    ATTENTION,
    BIAS,
    BUFFER,
    DTYPE_BITS,
    MLP,
    NON_FLOAT_DTYPES,
    NORM,
    OTHER,
    OTHER_EMBEDDING,
    OUTPUT_HEAD,
    POSITION_EMBEDDING,
    TOKEN_EMBEDDING,
    WEIGHT,
    Classification,
    Classified,
    TensorRecord,
)

_new = tuple.__new__

LAYER = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks|block|blk)\.(\d+)(?:\.|$)")
STACK = re.compile(r"(?:^|\.)(encoder|decoder|vision_model|text_model|vision_tower)\.")

# (pattern on the full name, why it is a buffer). Checked before anything else, after the dtype rule.
BUFFER_ROWS: tuple[tuple[re.Pattern, str], ...] = (
    # training checkpoints walked by the pytorch walker (full paths): torch optimizer state dicts, Lightning `optimizer_states`
    (re.compile(r"^(?:optimizer|optimizers|optimizer_states|optimizer_state_dict|optim|optim_state|opt_state|lr_schedulers|scheduler)(?:\.|$)"), "optimizer state"),
    (re.compile(r"(?:^|\.)state\.\d+\.(?:exp_avg|exp_avg_sq|max_exp_avg_sq|momentum_buffer|step|square_avg|acc_delta|sum|mu|eta|ax|prev|step_size)$"), "optimizer state"),  # torch.optim state_dict
    (re.compile(r"^(?:callbacks|loops)\."), "training state"),  # lightning .ckpt
    (re.compile(r"(?:^|\.)(?:attn|attention)\.bias$"), "causal mask"),  # gpt2, gpt-j, gpt-neo, gpt-neox (rank > 1)
    (re.compile(r"(?:^|\.)masked_bias$"), "causal mask"),  # gpt2, gpt-j, gpt-neox (scalar -1e4)
    (re.compile(r"(?:^|\.)(?:position_ids|token_type_ids)$"), "position/token-type ids"),  # bert, roberta, clip
    (re.compile(r"(?:^|\.)(?:inv_freq|cos_cached|sin_cached|_float_tensor)$"), "rotary/sinusoid cache"),  # llama<4.31, neox, fairseq
    # MoE router score correction: nn.Buffer in deepseek-v3/v3.2/v4, glm4-moe, minimax-m2, dots1, longcat, kimi... (transformers 5)
    # (Ling/Bailing, Hunyuan and Sarvam checkpoints name it `expert_bias`, but afmoe's `expert_bias` is a parameter:
    # those come from the transformers table, by model type)
    (re.compile(r"(?:^|\.)e_score_correction_bias$"), "router score correction"),
    # bart, mbart, marian, pegasus, blenderbot, led, plbart, mvp, bigbird-pegasus: zeros added to the logits
    (re.compile(r"(?:^|\.)final_logits_bias$"), "final logits bias"),
    # EMA codebooks of audio codecs (encodec, bark, xcodec, wavtokenizer; mimi's names): statistics, not trained
    (re.compile(r"(?:^|\.)codebook\.(?:embed_avg|cluster_size|inited|embed_sum|cluster_usage|initialized)$"), "codebook statistics"),
    (re.compile(r"(?:^|\.)(?:running_mean|running_var|num_batches_tracked)$"), "batchnorm statistics"),  # resnet, convnext
)

# (pattern on the stem: the name without its last '.weight'/'.bias', component). Order matters.
COMPONENT_ROWS: tuple[tuple[re.Pattern, str], ...] = (
    # token embedding: gpt2/neo/j `wte`, llama/mistral/qwen2 `embed_tokens`, bert/roberta `word_embeddings`,
    # t5 `shared`, neox `embed_in`, meta-llama `tok_embeddings`, gguf `token_embd`, mamba `embeddings`,
    # openai-gpt `tokens_embed`, xlnet `word_embedding`, clip `token_embedding`
    (re.compile(r"(?:^|\.)(?:wte|embed_tokens|word_embeddings|shared|embed_in|tok_embeddings|token_embd|embeddings|tokens_embed|word_embedding|token_embedding)$"), TOKEN_EMBEDDING),
    # position embedding: gpt2/neo `wpe`, bert `position_embeddings`, opt/bart `embed_positions`, openai-gpt `positions_embed`
    (re.compile(r"(?:^|\.)(?:wpe|position_embeddings|embed_positions|position_embedding|positions_embed)$"), POSITION_EMBEDDING),
    # other embedding tables: bert `token_type_embeddings`, t5 `relative_attention_bias`
    (re.compile(r"(?:^|\.)(?:token_type_embeddings|relative_attention_bias)$"), OTHER_EMBEDDING),
    # norms: gpt2 `ln_1/ln_2/ln_f`, llama `input_layernorm/post_attention_layernorm/norm`, bert `LayerNorm`,
    # t5 `layer_norm/final_layer_norm`, neox `input_layernorm/final_layer_norm`, qwen3 `q_norm/k_norm`, gguf `*_norm`
    (re.compile(r"(?:^|\.)(?:ln_\w+|ln|[\w]*norm[\w]*|[\w]*Norm[\w]*)$"), NORM),
    # output head: `lm_head` (most), neox `embed_out`, bert `cls.predictions.*`, roberta `lm_head.dense/decoder`,
    # meta-llama / gguf `output`. The first three also under a prefix (`language_model.lm_head` in llava-style
    # checkpoints, `state_dict.lm_head` in training checkpoints); `output` only at the top (bert has `attention.output`)
    (re.compile(r"(?:^|\.)(?:lm_head(?:\..+)?|embed_out|cls\.predictions(?:\..+)?)$|^(?:model\.)?output$"), OUTPUT_HEAD),
    # attention: gpt2 `attn.c_attn/c_proj`, llama `self_attn.{q,k,v,o}_proj`, bert `attention.self.{query,key,value}`
    # and `attention.output.dense`, t5 `SelfAttention/EncDecAttention.{q,k,v,o}`, neox `attention.query_key_value`,
    # gguf `attn_q/attn_k/attn_v/attn_output`, falcon/bloom `self_attention.query_key_value`, bert decoder `crossattention`
    (re.compile(r"(?:^|\.)(?:attn|self_attn|attention|self_attention|crossattention|cross_attention|SelfAttention|EncDecAttention|cross_attn|encoder_attn|attn_\w+)(?:\.|$)"), ATTENTION),
    # mlp: gpt2 `mlp.c_fc/c_proj`, llama `mlp.{gate,up,down}_proj`, bert `intermediate.dense` and `output.dense`,
    # t5 `DenseReluDense.{wi,wo}`, mixtral `block_sparse_moe`, gguf `ffn_*`, opt/bart `fc1/fc2`
    (re.compile(r"(?:^|\.)(?:mlp|ffn|ffn_\w+|feed_forward|DenseReluDense|intermediate|output\.dense|block_sparse_moe|experts|fc1|fc2|c_fc)(?:\.|$)"), MLP),
)


def split_suffix(name: str) -> tuple[str, str]:
    """``"h.0.attn.c_attn.weight"`` -> ``("h.0.attn.c_attn", "weight")``; names not ending in weight/bias keep whole."""
    stem, dot, last = name.rpartition(".")
    return (stem, last) if dot and last in ("weight", "bias") else (name, "")


def layer_of(name: str) -> str | None:
    m = LAYER.search(name)
    if not m:
        return None
    stack = STACK.search(name[: m.start() + 1])
    return f"{stack.group(1)}.{m.group(1)}" if stack else m.group(1)


_DIGITS = re.compile(r"(?<![^.])\d+(?![^.])")  # whole numeric path components: h.11 -> h.0, not fc1


def component_of(name: str) -> str | None:
    # Layers and experts repeat the same stems with other numbers: classify each shape of name once.
    return _component_of_shape(_DIGITS.sub("0", split_suffix(name)[0]))


@lru_cache(maxsize=65536)
def _component_of_shape(stem: str) -> str | None:
    for pattern, component in COMPONENT_ROWS:
        if pattern.search(stem):
            return component
    return None


@lru_cache(maxsize=65536)
def _buffer_name(shape_of_name: str) -> str | None:
    for pattern, reason in BUFFER_ROWS:
        if pattern.search(shape_of_name):
            return reason
    return None


@lru_cache(maxsize=65536)
def _by_shape(shape_of_name: str) -> tuple[str | None, str | None, bool, bool]:
    """(buffer reason by name, component, ends in 'bias', has a layer index) for a name with its numbers zeroed."""
    return (
        _buffer_name(shape_of_name),
        _component_of_shape(split_suffix(shape_of_name)[0]),
        shape_of_name.endswith("bias"),
        LAYER.search(shape_of_name) is not None,
    )


_LAYER_WORDS = frozenset({"h", "layers", "layer", "blocks", "block", "blk"})
_STACK_WORDS = frozenset({"encoder", "decoder", "vision_model", "text_model", "vision_tower"})


@lru_cache(maxsize=65536)
def _layer_at(shape_of_name: str) -> tuple[int, str | None] | None:
    """Where :func:`layer_of` finds the layer, for a name with its numbers zeroed: (index of the layer number among
    the name's dot-separated parts, the stack before it or None). The same first matches as LAYER and STACK, found
    once per shape of name, so each tensor only picks its own number out of its parts."""
    parts = shape_of_name.split(".")
    for i in range(len(parts) - 1):
        if parts[i] in _LAYER_WORDS and parts[i + 1] == "0":
            stack = next((p for p in parts[:i] if p in _STACK_WORDS), None)
            return i + 1, stack
    return None


# Model types in which a buffer row's tensor is a parameter after all (transformers 5 source, checked per model).
PARAMETER_IN: dict[str, frozenset[str]] = {
    "router score correction": frozenset({"ernie4_5_moe", "ernie4_5_vl_moe", "laguna"}),  # nn.Parameter there
}


_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ASCII_DIGITS = frozenset("0123456789")


def _plan(name: str, known: tuple | None = None, by_last: Mapping[str, str] | None = None) -> tuple:
    """What every name with the same digit-zeroed bytes as ``name`` shares, computed once per such key.

    Names that differ only in their digits (layer and expert numbers of equal length) have their dots, their whole
    numeric parts and the digits inside words (``fc1``) in the same places. So the layer number sits at the same
    characters, and when every digit is a whole part (``layers.12.mlp.experts.201.up_proj.weight``) the table lookup
    is the same too; when words hold digits (``blocks.3.mlp.fc1.weight``) the lookup depends on those digits only.
    Returns (lookup, or None when words hold digits; positions of the digits inside words; a cache of lookups by
    those digits; the layer number's span or None; the stack or None; whether the name may be a routed expert's;
    the reason ``by_last`` gives the name's last part, or None). ``by_last``'s endings hold no digit, so names equal
    but for their digits get the same answer.
    ``known``: (buffer test, buffer reason, bias test, not-bias test) for the model type, from
    :mod:`ckptcount.analysis.transformers_table` (see :func:`_with_known`), or None.
    """
    parts = name.split(".")
    pos = 0
    word_digits: list[int] = []  # where the digits inside words are (whole numeric parts are zeroed, not looked at)
    for p in parts:
        if not p.isdecimal():
            word_digits.extend(pos + i for i, ch in enumerate(p) if ch in _ASCII_DIGITS)
        pos += len(p) + 1
    shape = shape_of_name(name)
    lookup = _with_known(_by_shape(shape), shape, known)
    at = _layer_at(shape) if lookup[3] else None
    layer_span = None
    if at is not None:
        start = sum(len(p) + 1 for p in parts[: at[0]])
        layer_span = (start, start + len(parts[at[0]]))
    stack = None if at is None else at[1]
    expert = "experts." in name or "_exps" in name  # may be a routed expert (moe.expert_kind's first test)
    by_ending = by_last.get(name[name.rfind(".") :]) if by_last and "." in name else None
    if not word_digits:
        return lookup, (), None, layer_span, stack, expert, by_ending
    return None, tuple(word_digits), {}, layer_span, stack, expert, by_ending


def shape_of_name(name: str) -> str:
    """``h.11.attn.bias`` -> ``h.0.attn.bias``: whole-number path parts zeroed, digits inside words (``fc1``) kept.
    The form the role tables and the transformers table are looked up in."""
    return ".".join(["0" if p.isdecimal() else p for p in name.split(".")])


def _word_digit_lookup(name: str, known: tuple | None = None) -> tuple:
    shape = shape_of_name(name)
    return _with_known(_by_shape(shape), shape, known)


def _with_known(lookup: tuple, shape_of_name: str, known: tuple | None) -> tuple:
    """What the model type's transformers class says where names do not: a persistent buffer no buffer row knows;
    a bias whose name does not end in ``bias``, or a name ending in ``bias`` that is not one."""
    if known is None:
        return lookup
    is_buffer, reason, is_bias, not_bias = known
    if lookup[0] is None and is_buffer is not None and is_buffer(shape_of_name):
        return (reason,) + lookup[1:]
    if is_bias is not None and not lookup[2] and is_bias(shape_of_name):
        return lookup[:2] + (True,) + lookup[3:]
    if not_bias is not None and lookup[2] and not_bias(shape_of_name):
        return lookup[:2] + (False,) + lookup[3:]
    return lookup


def _max_ranks(tensors) -> dict[str, int]:
    ranks: dict[str, int] = defaultdict(int)
    for t in tensors:
        stem = split_suffix(t.name)[0]
        if len(t.shape) > ranks[stem]:
            ranks[stem] = len(t.shape)
    return ranks


def classify(
    tensors: tuple[TensorRecord, ...] | list[TensorRecord],
    model_type: str | None = None,
    buffers: Mapping[str, str] | None = None,
    buffers_by_last: Mapping[str, str] | None = None,
) -> tuple[Classified, ...]:
    """Classify every tensor (see :func:`classify_all`, which also gathers what later stages look up)."""
    return classify_all(tensors, model_type, buffers, buffers_by_last).records


def classify_all(
    tensors: tuple[TensorRecord, ...] | list[TensorRecord],
    model_type: str | None = None,
    buffers: Mapping[str, str] | None = None,
    buffers_by_last: Mapping[str, str] | None = None,
) -> Classification:
    """Classify every tensor. A bias is a 1-D parameter whose name ends in ``bias``; every other parameter is a weight.

    Generic fallback for names no row knows: a vector whose stem has no matrix beside it is a norm scale/shift (a
    Linear's bias always sits next to its weight matrix); anything else is ``other``. Names that differ only in their
    numbers (layers, experts) share one table lookup (:func:`_plan`). ``model_type`` (config.json) settles the few
    names that are a buffer in most models and a parameter in some (``PARAMETER_IN``). ``buffers`` names tensors
    already known not to be parameters, with the reason (quantization metadata, from ``quant.prepare``);
    ``buffers_by_last`` does the same by the name's last part (``.weight_scale_inv`` -> reason; endings without
    digits), decided once per name shape instead of by a pass over every name: the names it made buffers are
    ``Classification.buffers_by_last``. Names no row knows that ``model_type``'s transformers class registers as
    persistent buffers are buffers too (:mod:`ckptcount.analysis.transformers_table`).

    One pass, the :class:`Classified` records and the :class:`Classification` gathered as they are made
    (:func:`gather` does the same from records): this runs once per tensor of repos with 90,000 of them, so the loop
    stays one function with gather's body inline (a call per tensor per helper is what docs/robustness.md measured
    away), not split under the ~80-line rule.
    """
    plans: dict[bytes, tuple] = {}
    ranks: dict[str, int] | None = None  # max rank per stem, built only if some name is unknown to every row
    not_parameters = {dt: f"{dt} tensor (integer/bool tensors are never parameters)" for dt in NON_FLOAT_DTYPES}
    kept_buffers = {reason for reason, types in PARAMETER_IN.items() if model_type in types}
    test = transformers_table.buffer_matcher(model_type)
    is_bias, not_bias = transformers_table.bias_matchers(model_type)
    known = None
    if test is not None or is_bias is not None or not_bias is not None:
        known = (test, transformers_table.reason(model_type), is_bias, not_bias)
    out = []
    append = out.append
    names: set[str] = set()
    add_name = names.add
    parameters: dict[str, list] = {}
    by_reason: dict[str, list] = {}
    totals: dict[tuple, list[int]] = {}
    experts: list[Classified] = []
    expert_shapes: list[tuple] = []
    found: dict[str, str] = {}  # names buffers_by_last made buffers, in order
    bits = DTYPE_BITS
    for t in tensors:
        name = t.name
        key = name.encode("utf-8", "surrogatepass").translate(_ZERO)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _plan(name, known, buffers_by_last)
        lookup, word_digits, by_digits, layer_span, stack, expert, by_ending = plan
        if lookup is None:  # digits inside words (fc1, fc2): the lookup depends on those digits alone
            digits = name[word_digits[0]] if len(word_digits) == 1 else "".join([name[i] for i in word_digits])
            lookup = by_digits.get(digits)
            if lookup is None:
                lookup = by_digits[digits] = _word_digit_lookup(name, known)
        buffer_by_name, component, ends_bias, _ = lookup
        if layer_span is None:
            layer = None
        else:
            layer = name[layer_span[0] : layer_span[1]]
            if stack is not None:
                layer = f"{stack}.{layer}"
        rank = len(t.shape)
        dtype = t.dtype
        if buffers and name in buffers:
            kind, component, reason = BUFFER, None, buffers[name]
        elif by_ending is not None:
            kind, component, reason = BUFFER, None, by_ending
            found[name] = by_ending
        elif dtype in not_parameters:
            kind, component, reason = BUFFER, None, not_parameters[dtype]
        # `attn.bias` is a real bias when it is a vector; the GPT-2 mask is [1,1,n,n]
        elif (
            buffer_by_name is not None
            and not (buffer_by_name == "causal mask" and rank == 1 and not name.endswith("masked_bias"))
            and buffer_by_name not in kept_buffers
        ):
            kind, component, reason = BUFFER, None, buffer_by_name
        else:
            kind = BIAS if rank == 1 and ends_bias else WEIGHT
            reason = "name"
            if component is None:
                if ranks is None:
                    ranks = _max_ranks(tensors)
                if rank <= 1 and ranks[split_suffix(name)[0]] <= 1:
                    component, reason = NORM, "vector without a matrix beside it"
                else:
                    component, reason = OTHER, "no row matched"
        c = _new(Classified, (t, kind, component, layer, reason))
        append(c)
        # gather (the body of gather(), inline)
        add_name(name)
        n = t.numel
        nb = t.stored_bytes
        if nb is None:
            nb = n * bits[dtype] // 8
        if kind == BUFFER:
            total_key = (BUFFER, reason, None, dtype)
            group = by_reason.get(reason)
            if group is None:
                by_reason[reason] = [t]
            else:
                group.append(t)
        else:
            total_key = (kind, component, layer, dtype)
            group = parameters.get(component)
            if group is None:
                parameters[component] = [c]
            else:
                group.append(c)
            if expert:
                experts.append(c)
                expert_shapes.append(plan)
        acc = totals.get(total_key)
        if acc is None:
            totals[total_key] = [1, n, nb]
        else:
            acc[0] += 1
            acc[1] += n
            acc[2] += nb
    return _classification(tuple(out), names, parameters, totals, by_reason, experts, expert_shapes, found)


def gather(records: tuple[Classified, ...] | list[Classified]) -> Classification:
    """The :class:`Classification` of records classified elsewhere (what :func:`classify_all` gathers inline)."""
    names: set[str] = set()
    parameters: dict[str, list] = {}
    by_reason: dict[str, list] = {}
    totals: dict[tuple, list[int]] = {}
    experts: list[Classified] = []
    for c in records:
        t = c.tensor
        names.add(t.name)
        if c.kind == BUFFER:
            total_key = (BUFFER, c.reason, None, t.dtype)
            by_reason.setdefault(c.reason, []).append(t)
        else:
            total_key = (c.kind, c.component, c.layer, t.dtype)
            parameters.setdefault(c.component, []).append(c)
            if "experts." in t.name or "_exps" in t.name:
                experts.append(c)
        acc = totals.setdefault(total_key, [0, 0, 0])
        acc[0] += 1
        acc[1] += t.numel
        acc[2] += t.nbytes
    return _classification(tuple(records), names, parameters, totals, by_reason, experts)


def _classification(records, names, parameters, totals, by_reason, experts, expert_shapes=(), found=None) -> Classification:
    return Classification(
        records=records,
        names=names,
        unique=len(names) == len(records),
        parameters=MappingProxyType({k: tuple(v) for k, v in parameters.items()}),
        totals=MappingProxyType(totals),
        buffers=MappingProxyType({k: tuple(v) for k, v in by_reason.items()}),
        experts=tuple(experts),
        expert_shapes=tuple(expert_shapes),
        buffers_by_last=MappingProxyType(found or {}),
    )
