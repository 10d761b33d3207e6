"""What config.json says about tying and architecture. Pure functions of the parsed JSON, plus one bounded reader."""

from __future__ import annotations

import json
from typing import Mapping

from ..errors import ConfigError
from .transformers_table import never_ties_head

MAX_CONFIG_BYTES = 16 * 1024 * 1024


def parse_config(raw: bytes, where: str) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(where, f"config is {len(raw)} bytes, over the {MAX_CONFIG_BYTES}-byte limit")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: also an integer literal over the 4300-digit limit
        raise ConfigError(where, f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ConfigError(where, "not a JSON object")
    return obj


def tie_setting(config: Mapping | None) -> tuple[bool | None, str]:
    """Whether the config ties the output head to the token embedding, and the words that say how we know.

    Looks at ``tie_word_embeddings`` at the top level, then under ``text_config`` (multimodal wrappers); when absent
    the transformers default (True) applies, unless the architecture's class never ties its head
    (:mod:`ckptcount.analysis.transformers_table`). Without a config there is no evidence either way: (None, ...).
    """
    if config is None:
        return None, "no config.json"
    for scope, cfg in (("", config), ("text_config.", config.get("text_config"))):
        if isinstance(cfg, Mapping) and "tie_word_embeddings" in cfg:
            value = bool(cfg["tie_word_embeddings"])
            return _class_decides(value, f"config: {scope}tie_word_embeddings={str(value).lower()}", config)
    return _class_decides(True, "config: tie_word_embeddings absent (transformers default: true)", config)


def _class_decides(value: bool, how: str, config: Mapping) -> tuple[bool, str]:
    """A class that keeps its head apart even when asked to tie (transformers' BigBirdPegasusForCausalLM, whose
    ``_tied_weights_keys`` is empty) is untied whatever the setting says."""
    if value:
        cls = never_ties_head(architectures(config))
        if cls is not None:
            return False, f"{how}, but transformers' {cls} never ties its output head to the embedding"
    return value, how


def architectures(config: Mapping | None) -> tuple[str, ...]:
    if not config:
        return ()
    archs = config.get("architectures") or ()
    if isinstance(archs, str):
        archs = (archs,)
    return tuple(a for a in archs if isinstance(a, str))


def vocab_size(config: Mapping | None) -> int | None:
    for cfg in (config or {}, (config or {}).get("text_config") or {}):
        v = cfg.get("vocab_size") if isinstance(cfg, Mapping) else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def model_type(config: Mapping | None) -> str | None:
    """``model_type`` of the config (the top level's; else its ``text_config``'s)."""
    for cfg in (config or {}, (config or {}).get("text_config")):
        v = cfg.get("model_type") if isinstance(cfg, Mapping) else None
        if isinstance(v, str):
            return v
    return None
