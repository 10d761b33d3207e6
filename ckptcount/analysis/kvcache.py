"""What the KV cache (and any fixed recurrent state) costs per token and at a context length: a pure function of
config.json (or a GGUF file's key/values), never of tensor data.

A model's cache is described as :class:`LayerGroup` s (how many layers hold what per token, up to which window, and
which fixed state), a :class:`CacheShape` with the convention and every assumption made, then priced at a dtype,
a context and a batch by :func:`estimate`. Families (docs/preflight.md gives each formula and its source):

- standard attention (MHA/GQA/MQA): ``2 × num_key_value_heads × head_dim`` elements per token per layer;
- sliding-window layers (Mistral ``sliding_window``, Gemma 2/3 and Cohere 2 interleaving, Qwen 2 ``max_window_layers``,
  ``layer_types``): the same per token, but a layer keeps at most ``window`` tokens;
- MLA (DeepSeek-V2/V3 and other configs with ``kv_lora_rank``): ``kv_lora_rank + qk_rope_head_dim`` per token per layer,
  the compressed latent, as vLLM caches it (and transformers 5);
- hybrid models: Mamba (Jamba) and Gated DeltaNet (Qwen3-Next) layers keep a fixed-size state instead of a growing cache;
- encoder-decoder (T5, Whisper): decoder self-attention per token plus cross-attention at the encoder length.

Whatever the config leaves open (a missing ``num_key_value_heads``, an encoder length...) is decided by a stated rule
and the rule is listed in ``assumptions``; a config that does not describe the cache raises :class:`KVUnknown`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

# --kv-dtype choices and their bits per element
KV_DTYPES: Mapping[str, int] = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8}
_TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}

FULL = "full_attention"
SLIDING = "sliding_attention"
CHUNKED = "chunked_attention"
MLA = "mla"
CROSS = "cross_attention"
MAMBA = "mamba"
DELTANET = "linear_attention"


class KVUnknown(Exception):
    """The config does not say enough to size the cache (the reason is the message)."""


@dataclass(frozen=True)
class LayerGroup:
    """``layers`` layers that each cache ``elements_per_token`` per token of one sequence (keys and values together),
    keep at most ``window`` tokens (None: every token), and ``state_elements`` of fixed state. ``tokens`` fixes the
    cached length whatever the context (cross-attention at the encoder length)."""

    kind: str
    layers: int
    elements_per_token: int = 0
    window: int | None = None
    state_elements: int = 0
    tokens: int | None = None

    def tokens_at(self, context: int) -> int:
        n = self.tokens if self.tokens is not None else context
        return min(n, self.window) if self.window is not None else n


@dataclass(frozen=True)
class CacheShape:
    """The cache a config describes, before any dtype: groups of layers, the convention followed and each assumption."""

    family: str  # "attention" | "sliding-window" | "mla" | "hybrid" | "encoder-decoder"
    groups: tuple[LayerGroup, ...]
    source: str  # "config.json" | "gguf"
    convention: str
    assumptions: tuple[str, ...] = ()
    other_conventions: Mapping[str, int] = field(default_factory=dict)  # name -> elements per token (all layers)


@dataclass(frozen=True)
class KVCache:
    shape: CacheShape
    context: int
    batch: int
    dtype: str
    dtype_from: str
    state_dtype: str

    @property
    def bits(self) -> int:
        return KV_DTYPES[self.dtype]

    def _bytes(self, elements: int, bits: int | None = None) -> int:
        return elements * (bits or self.bits) // 8

    @property
    def bytes_per_token(self) -> int:
        """Per sequence, every layer that grows with the context, while the context is within every window."""
        return self._bytes(sum(g.layers * g.elements_per_token for g in self.shape.groups if g.tokens is None))

    @property
    def bytes_per_token_unwindowed(self) -> int:
        """Per sequence, the layers without a window: what each token adds once the windows are full."""
        return self._bytes(sum(g.layers * g.elements_per_token for g in self.shape.groups if g.tokens is None and g.window is None))

    @property
    def fixed_bytes(self) -> int:
        """Per sequence, what does not grow with the context: recurrent states (at ``state_dtype``) and
        cross-attention at a fixed encoder length."""
        state = sum(g.layers * g.state_elements for g in self.shape.groups)
        fixed_kv = sum(g.layers * g.elements_per_token * g.tokens for g in self.shape.groups if g.tokens is not None)
        return self._bytes(state, KV_DTYPES[self.state_dtype]) + self._bytes(fixed_kv)

    def group_bytes(self, g: LayerGroup) -> int:
        """One group at the context, per sequence."""
        return self._bytes(g.layers * g.elements_per_token * g.tokens_at(self.context)) + self._bytes(g.layers * g.state_elements, KV_DTYPES[self.state_dtype])

    @property
    def bytes_per_sequence(self) -> int:
        return sum(self.group_bytes(g) for g in self.shape.groups)

    @property
    def total_bytes(self) -> int:
        """The cache at ``context`` tokens for each of ``batch`` sequences."""
        return self.batch * self.bytes_per_sequence


def estimate(shape: CacheShape, context: int, batch: int = 1, *, dtype: str, dtype_from: str, state_dtype: str | None = None) -> KVCache:
    return KVCache(shape, context, batch, dtype, dtype_from, state_dtype or dtype)


def kv_dtype(requested: str | None, weight_dtype: str | None, config: Mapping | None, source: str) -> tuple[str, str]:
    """The dtype the cache is priced at, and the words that say why: ``--kv-dtype``; else ``--dtype`` when it is a
    float type (engines cache at the dtype the model runs in: vLLM ``kv_cache_dtype=auto``, transformers); else the
    config's ``torch_dtype``/``dtype``; else llama.cpp's default f16 for GGUF; else fp16, said as an assumption."""
    if requested:
        return requested, "--kv-dtype"
    if weight_dtype in KV_DTYPES:
        return weight_dtype, "--dtype (the cache at the dtype the model runs in)"
    if source == "gguf":
        return "fp16", "llama.cpp's default cache type f16 (--cache-type-k/-v)"
    for cfg, scope in ((config or {}, ""), ((config or {}).get("text_config") or {}, "text_config.")):
        for key in ("torch_dtype", "dtype"):
            v = cfg.get(key) if isinstance(cfg, Mapping) else None
            if isinstance(v, str) and v in _TORCH_DTYPES:
                return _TORCH_DTYPES[v], f"config: {scope}{key}={v}"
    return "fp16", "assumed fp16: no --kv-dtype, no float --dtype, no dtype in config.json"


# ---------------------------------------------------------------------------------------------------------------
# config.json


def _int(cfg: Mapping, *keys: str) -> tuple[str, int] | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return k, v
    return None


@lru_cache(maxsize=1)
def _defaults_table() -> Mapping[str, Mapping[str, int]]:
    """kvcache_defaults.json (package data, generated by scripts/make_kvcache_defaults.py): per model_type, the
    transformers config class defaults of the keys that size a cache."""
    return json.loads((Path(__file__).with_name("kvcache_defaults.json")).read_text())["defaults"]


def _default(cfg: Mapping, key: str, notes: list[str]) -> int | None:
    """The transformers config class default of ``key`` for a config.json that leaves it out (said in ``notes``)."""
    mt = cfg.get("model_type")
    if key in cfg or not isinstance(mt, str):
        return None
    v = _defaults_table().get(mt, {}).get(key)
    if v is not None:
        notes.append(f"no {key}: {v}, the default of transformers' {mt} config class")
    return v


def _need(cfg: Mapping, what: str, *keys: str) -> int:
    got = _int(cfg, *keys)
    if got is None:
        raise KVUnknown(f"config.json has no {what} ({' / '.join(keys)})")
    return got[1]


_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")


def _attention(cfg: Mapping, notes: list[str], heads_keys=_HEADS, kv_keys=("num_key_value_heads", "num_kv_heads", "n_head_kv")) -> int:
    """Elements per token per layer of standard attention: 2 × kv_heads × head_dim (keys and values)."""
    heads = _need(cfg, "attention head count", *heads_keys)
    kv = _int(cfg, *kv_keys)
    if kv is None and kv_keys[0] not in cfg and (d := _default(cfg, kv_keys[0], notes)) is not None:
        kv = (kv_keys[0], d)
    if kv is not None and kv[1] > 0:
        kv_heads = kv[1]
    elif cfg.get("multi_query") is True:  # GPT-BigCode, Falcon-7B: one key/value head
        kv_heads = 1
        notes.append("multi_query=true: one key/value head (MQA)")
    else:
        kv_heads = heads
        notes.append(f"no {kv_keys[0]}: every attention head has its own keys and values (MHA, {heads} heads)")
    hd = _int(cfg, "head_dim", "d_kv", "attention_head_dim")
    if hd is None and (d := _default(cfg, "head_dim", notes)) is not None:
        hd = ("head_dim", d)
    if hd is not None and hd[1] > 0:
        head_dim = hd[1]
    else:
        hidden = _need(cfg, "hidden size", *_HIDDEN)
        if heads == 0 or hidden % heads:
            raise KVUnknown(f"config.json: hidden size {hidden} is not a multiple of {heads} heads and there is no head_dim")
        head_dim = hidden // heads
        notes.append(f"no head_dim: hidden size / attention heads = {hidden} / {heads} = {head_dim}")
    return 2 * kv_heads * head_dim


_QWEN = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")


def _sliding_window(cfg: Mapping, notes: list[str] | None = None) -> int | None:
    """``sliding_window`` (the class default when the key is absent), unless the config turns it off (Qwen 2/3:
    ``use_sliding_window`` false, as their transformers config classes do)."""
    if cfg.get("model_type") in _QWEN and cfg.get("use_sliding_window") is not True:
        return None
    v = cfg.get("sliding_window")
    if "sliding_window" not in cfg and notes is not None:
        v = _default(cfg, "sliding_window", notes)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _layer_types(cfg: Mapping, model_type: str | None, n_layers: int, notes: list[str]) -> list[str]:
    """The attention kind of each layer: ``layer_types`` when given; else the rule of the model's transformers config
    class (Gemma 2: every other layer sliding; Gemma 3 / Cohere 2: ``sliding_window_pattern``; Qwen 2/3:
    ``use_sliding_window`` from ``max_window_layers`` on; Qwen3-Next: ``full_attention_interval``); else every layer
    sliding when ``sliding_window`` is set (Mistral, as transformers' DynamicCache does), full otherwise."""
    lt = cfg.get("layer_types")
    if isinstance(lt, list) and all(isinstance(x, str) for x in lt):
        if len(lt) != n_layers:
            raise KVUnknown(f"config.json: layer_types lists {len(lt)} layers, num_hidden_layers says {n_layers}")
        return list(lt)
    window = _sliding_window(cfg, notes)
    mt = model_type or ""
    if mt == "qwen3_next":
        every = _int(cfg, "full_attention_interval")
        every = every[1] if every else _default(cfg, "full_attention_interval", notes) or 4
        notes.append(f"no layer_types: every {every}th layer full attention, the others Gated DeltaNet (transformers' Qwen3NextConfig)")
        return [FULL if (i + 1) % every == 0 else DELTANET for i in range(n_layers)]
    if mt in _QWEN:
        if window is not None:
            first = _int(cfg, "max_window_layers")
            first = first[1] if first else _default(cfg, "max_window_layers", notes) or 28
            notes.append(f"no layer_types: use_sliding_window=true, layers from max_window_layers={first} on slide (transformers' Qwen2Config)")
            return [SLIDING if i >= first else FULL for i in range(n_layers)]
        return [FULL] * n_layers
    if window is None:
        return [FULL] * n_layers
    if mt == "gemma2":
        notes.append("no layer_types: every other layer sliding, from the first (transformers' Gemma2Config)")
        return [SLIDING if (i + 1) % 2 else FULL for i in range(n_layers)]
    if mt in ("gemma3", "gemma3_text", "cohere2"):
        default = 6 if mt != "cohere2" else 4
        p = _int(cfg, "sliding_window_pattern")
        pattern = p[1] if p and p[1] > 0 else default
        notes.append(f"no layer_types: every {pattern}th layer full, the others sliding (sliding_window_pattern={pattern}{'' if p else ', the default'})")
        return [SLIDING if (i + 1) % pattern else FULL for i in range(n_layers)]
    notes.append(f"sliding_window={window} and no layer_types: every layer slides (as Mistral, and transformers' DynamicCache)")
    return [SLIDING] * n_layers


def _groups(kinds: list[str], per_kind: Mapping[str, LayerGroup]) -> tuple[LayerGroup, ...]:
    """One group per kind, in first-seen order, with its layer count."""
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    groups = []
    for k, n in out.items():
        if k not in per_kind:
            raise KVUnknown(f"config.json: layer type {k!r} is not one ckptcount can size")
        g = per_kind[k]
        groups.append(LayerGroup(g.kind, n, g.elements_per_token, g.window, g.state_elements, g.tokens))
    return tuple(groups)


def _text(config: Mapping, notes: list[str]) -> Mapping:
    """The language model's config: ``text_config`` of a multimodal wrapper when the top level has no layers."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and _int(config, *_LAYERS) is None and _int(text, *_LAYERS) is not None:
        notes.append("text_config: the language model's cache (a vision or audio tower caches nothing)")
        return text
    return config


def shape_from_config(config: Mapping | None) -> CacheShape:
    """The cache ``config`` describes; raises :class:`KVUnknown` when it does not say enough."""
    if not config:
        raise KVUnknown("no config.json: the cache cannot be sized")
    notes: list[str] = []
    mt = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    if mt == "whisper" or (config.get("is_encoder_decoder") is True and mt in (None, "t5", "mt5", "umt5", "bart", "mbart", "marian", "pegasus")) or mt in ("t5", "mt5", "umt5"):
        return _encoder_decoder(config, mt, notes)
    cfg = _text(config, notes)
    mt = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else mt
    n = _need(cfg, "layer count", *_LAYERS)
    if cfg.get("kv_lora_rank") is not None:
        return _mla(cfg, n, notes)
    if mt == "jamba" or _int(cfg, "attn_layer_period") is not None:
        return _jamba(cfg, n, notes)
    kinds = _layer_types(cfg, mt, n, notes)
    per_token = _attention(cfg, notes)
    window = _sliding_window(cfg, [])
    per_kind = {FULL: LayerGroup(FULL, 0, per_token)}
    if window is not None:
        per_kind[SLIDING] = LayerGroup(SLIDING, 0, per_token, window)
    chunk = _int(cfg, "attention_chunk_size")
    if chunk is not None and chunk[1] > 0:  # Llama 4: chunked layers attend within their chunk; cached as a window
        per_kind[CHUNKED] = LayerGroup(CHUNKED, 0, per_token, chunk[1])
    if DELTANET in kinds:
        per_kind[DELTANET] = LayerGroup(DELTANET, 0, state_elements=_deltanet_state(cfg))
    groups = _groups(kinds, per_kind)
    family = "hybrid" if DELTANET in kinds else "sliding-window" if any(g.window for g in groups) else "attention"
    convention = "keys and values of every cached token: 2 × num_key_value_heads × head_dim per layer (transformers DynamicCache, vLLM, llama.cpp)"
    if family == "sliding-window":
        convention += "; a sliding layer keeps at most sliding_window tokens (vLLM; transformers keeps sliding_window - 1 between steps)"
    if family == "hybrid":
        convention += "; Gated DeltaNet layers: conv state (conv_dim × linear_conv_kernel_dim) + recurrent state (value heads × key head dim × value head dim), as transformers holds them"
    return CacheShape(family, groups, "config.json", convention, tuple(notes))


def _mla(cfg: Mapping, n: int, notes: list[str]) -> CacheShape:
    rank = _need(cfg, "MLA latent rank", "kv_lora_rank")
    rope = _need(cfg, "MLA rope head dim", "qk_rope_head_dim")
    heads = _need(cfg, "attention head count", *_HEADS)
    nope = _int(cfg, "qk_nope_head_dim")
    v = _int(cfg, "v_head_dim")
    other = {}
    if nope is not None and v is not None:
        other["expanded: num_attention_heads × (qk_nope_head_dim + qk_rope_head_dim + v_head_dim) per layer (transformers 4.x, naive MLA)"] = n * heads * (nope[1] + rope + v[1])
    convention = (
        "MLA: the compressed latent kv_lora_rank + qk_rope_head_dim per token per layer, one copy for keys and values"
        " (vLLM's MLA backends; transformers 5 DynamicCache holds the same two tensors)"
    )
    return CacheShape("mla", (LayerGroup(MLA, n, rank + rope),), "config.json", convention, tuple(notes), other)


def _deltanet_state(cfg: Mapping) -> int:
    kh = _need(cfg, "linear-attention key heads", "linear_num_key_heads")
    vh = _need(cfg, "linear-attention value heads", "linear_num_value_heads")
    kd = _need(cfg, "linear-attention key head dim", "linear_key_head_dim")
    vd = _need(cfg, "linear-attention value head dim", "linear_value_head_dim")
    kernel = _need(cfg, "linear-attention conv kernel", "linear_conv_kernel_dim")
    conv_dim = 2 * kh * kd + vh * vd
    return conv_dim * kernel + vh * kd * vd


def _jamba(cfg: Mapping, n: int, notes: list[str]) -> CacheShape:
    period = _int(cfg, "attn_layer_period")
    offset = _int(cfg, "attn_layer_offset")
    p = period[1] if period else 8
    o = offset[1] if offset else 4
    if not period or not offset:
        notes.append(f"attention every {p} layers from layer {o} (transformers' JambaConfig defaults for what config.json leaves out)")
    kinds = [FULL if i % p == o else MAMBA for i in range(n)]
    hidden = _need(cfg, "hidden size", *_HIDDEN)
    expand = _int(cfg, "mamba_expand")
    d_state = _int(cfg, "mamba_d_state")
    d_conv = _int(cfg, "mamba_d_conv")
    e, s, c = (expand[1] if expand else 2), (d_state[1] if d_state else 16), (d_conv[1] if d_conv else 4)
    if not (expand and d_state and d_conv):
        notes.append(f"Mamba sizes from transformers' JambaConfig defaults where absent: mamba_expand={e}, mamba_d_state={s}, mamba_d_conv={c}")
    inner = e * hidden
    per_kind = {FULL: LayerGroup(FULL, 0, _attention(cfg, notes)), MAMBA: LayerGroup(MAMBA, 0, state_elements=inner * c + inner * s)}
    convention = (
        "attention layers: 2 × num_key_value_heads × head_dim per token; Mamba layers: conv state (mamba_expand × hidden_size × mamba_d_conv)"
        " + SSM state (mamba_expand × hidden_size × mamba_d_state), fixed, as transformers holds them"
    )
    return CacheShape("hybrid", _groups(kinds, per_kind), "config.json", convention, tuple(notes))


def _encoder_decoder(cfg: Mapping, mt: str | None, notes: list[str]) -> CacheShape:
    if mt == "whisper":
        n = _need(cfg, "decoder layer count", "decoder_layers")
        per_token = _attention(cfg, notes, heads_keys=("decoder_attention_heads",), kv_keys=("decoder_key_value_heads",))
        enc = _int(cfg, "max_source_positions")
        enc_len = enc[1] if enc else 1500
        notes.append(f"cross-attention over the encoder's {enc_len} frames (max_source_positions: 30 s of audio){'' if enc else ', the default'}")
        groups = (LayerGroup(FULL, n, per_token), LayerGroup(CROSS, n, per_token, tokens=enc_len))
    else:
        n_dec = _int(cfg, "num_decoder_layers", "decoder_layers")
        if n_dec is None:
            n = _need(cfg, "layer count", "num_layers", "encoder_layers")
            notes.append(f"no num_decoder_layers: as many decoder layers as encoder layers ({n})")
        else:
            n = n_dec[1]
        per_token = _attention(cfg, notes, heads_keys=("num_heads", "decoder_attention_heads", "num_attention_heads"))
        notes.append("cross-attention at an encoder input as long as --context (the encoder length is the input's, not in the config)")
        groups = (LayerGroup(FULL, n, per_token), LayerGroup(CROSS, n, per_token))
    convention = (
        "decoder self-attention 2 × heads × head_dim per generated token per layer, plus cross-attention keys and values"
        " of the encoder output per decoder layer (transformers EncoderDecoderCache)"
    )
    return CacheShape("encoder-decoder", groups, "config.json", convention, tuple(notes))


# ---------------------------------------------------------------------------------------------------------------
# GGUF key/values


def shape_from_gguf(records) -> CacheShape:
    """llama.cpp's KV cache of a GGUF model: per layer n_embd_k_gqa + n_embd_v_gqa per token, where n_embd_k_gqa =
    key_length × head_count_kv (key_length defaults to embedding_length / head_count), as llama_kv_cache sizes it."""
    from ..formats.gguf import architecture, kv_value

    arch = architecture(records)
    if arch is None:
        raise KVUnknown("the GGUF file has no general.architecture")
    notes: list[str] = []

    def get(key: str):
        v = kv_value(records, "{arch}." + key)
        return v

    def need(key: str) -> int:
        v = get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise KVUnknown(f"the GGUF file has no integer {arch}.{key}")
        return v

    n = need("block_count")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv")
    if isinstance(heads, list) or isinstance(kv_heads, list):
        heads_l = heads if isinstance(heads, list) else [heads] * n
        kv_l = kv_heads if isinstance(kv_heads, list) else [kv_heads] * n
    else:
        heads_l = [heads] * n
        if kv_heads is None:
            notes.append(f"no {arch}.attention.head_count_kv: as many key/value heads as heads (llama.cpp's default)")
            kv_heads = heads
        kv_l = [kv_heads] * n
    if len(heads_l) != n or len(kv_l) != n or not all(isinstance(x, int) and not isinstance(x, bool) for x in heads_l + kv_l):
        raise KVUnknown(f"the GGUF file's {arch}.attention.head_count(_kv) is not an integer or a per-layer list of {n}")
    if get("attention.kv_lora_rank") is not None or get("ssm.state_size") is not None:
        raise KVUnknown(f"GGUF architecture {arch!r}: MLA or recurrent layers are not sized from GGUF key/values yet")
    embd = get("embedding_length")
    k_len, v_len = get("attention.key_length"), get("attention.value_length")
    total = 0
    for h, kvh in zip(heads_l, kv_l):
        if kvh == 0:
            continue
        if not (isinstance(k_len, int) and isinstance(v_len, int)):
            if not isinstance(embd, int) or not h or embd % h:
                raise KVUnknown(f"the GGUF file gives neither {arch}.attention.key_length nor an embedding_length divisible by head_count")
        kd = k_len if isinstance(k_len, int) else embd // h
        vd = v_len if isinstance(v_len, int) else embd // h
        total += kvh * (kd + vd)
    if not isinstance(k_len, int):
        notes.append(f"no {arch}.attention.key_length: embedding_length / head_count per head (llama.cpp's default)")
    window = get("attention.sliding_window")
    if isinstance(window, int) and window > 0:
        notes.append(f"{arch}.attention.sliding_window={window} is ignored: which layers slide is llama.cpp's per-architecture rule; every layer counted at full context (an upper bound)")
    per_layer = total // n if n else 0
    if total != per_layer * n:  # heterogeneous layers: one group per layer
        groups = tuple(LayerGroup(FULL, 1, kvh * ((k_len if isinstance(k_len, int) else embd // h) + (v_len if isinstance(v_len, int) else embd // h))) for h, kvh in zip(heads_l, kv_l) if kvh)
    else:
        groups = (LayerGroup(FULL, n, per_layer),)
    convention = "llama.cpp: n_layer × n_ctx × (n_embd_k_gqa + n_embd_v_gqa) × type size (llama_kv_cache; default type f16)"
    return CacheShape("attention", groups, "gguf", convention, tuple(notes))


def to_dict(kv: KVCache) -> dict:
    s = kv.shape
    return {
        "source": s.source,
        "family": s.family,
        "convention": s.convention,
        "dtype": kv.dtype,
        "dtype_from": kv.dtype_from,
        **({"state_dtype": kv.state_dtype} if any(g.state_elements for g in s.groups) else {}),
        "context": kv.context,
        "batch": kv.batch,
        "bytes_per_token": kv.bytes_per_token,
        "bytes_per_token_unwindowed": kv.bytes_per_token_unwindowed,
        "fixed_bytes": kv.fixed_bytes,
        "bytes_per_sequence": kv.bytes_per_sequence,
        "bytes_at_context": kv.total_bytes,
        "layers": [
            {
                "kind": g.kind,
                "layers": g.layers,
                "elements_per_token": g.elements_per_token,
                "window": g.window,
                "tokens": g.tokens_at(kv.context),
                "state_elements": g.state_elements,
                "bytes": kv.group_bytes(g) * kv.batch,
            }
            for g in s.groups
        ],
        "other_conventions": {k: {"bytes_per_token": kv._bytes(v)} for k, v in s.other_conventions.items()},
        "assumptions": list(s.assumptions),
    }


def for_checkpoint(checkpoint, context: int, batch: int = 1, kv: str | None = None, weight_dtype: str | None = None) -> KVCache:
    """The cache of ``checkpoint`` (a records.Checkpoint) at ``context`` tokens × ``batch``: from the GGUF key/values
    of a GGUF file, else from config.json. Raises :class:`KVUnknown`."""
    if any(f.format == "gguf" for f in checkpoint.files):
        shape, source = shape_from_gguf(checkpoint.files), "gguf"
    else:
        shape, source = shape_from_config(checkpoint.config), "config.json"
    dtype, why = kv_dtype(kv, weight_dtype, checkpoint.config, source)
    state = dtype
    if any(g.state_elements for g in shape.groups) and dtype == "fp8":
        run, _ = kv_dtype(None, weight_dtype, checkpoint.config, source)
        state = run if run != "fp8" else "bf16"
        shape = CacheShape(shape.family, shape.groups, shape.source, shape.convention, shape.assumptions + (f"recurrent states kept at {state}, not fp8 (vLLM quantizes only the attention cache)",), shape.other_conventions)
    return estimate(shape, context, batch, dtype=dtype, dtype_from=why, state_dtype=state)
