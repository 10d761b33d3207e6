"""What transformers itself says about a model type that names alone cannot: its persistent buffers, which classes
never tie their output head to the input embedding, what the tied head of the others is called, which weights
are ``nn.Embedding`` modules (where that differs from the name rules' embeddings), and which biases are named
otherwise.

A header lists names, not whether ``register_buffer`` or ``nn.Parameter`` made them. The name rules in
:mod:`ckptcount.analysis.classify` catch the buffers many families share (causal masks, rotary caches, batch-norm
statistics...); the rest are one family's own: I-BERT's integer copies of every weight, the EMA codebooks of audio
codecs, Gemma 4's ``layer_scalar``, MiniMax's decay tables. For those, ``transformers_table.json`` (package data)
lists, per ``model_type``, the floating-point persistent buffers as ``save_pretrained`` names them in the file, with
whole-number path parts written as 0. It is generated, never edited: ``scripts/sweep_transformers.py`` builds a tiny
model of every architecture the installed transformers has and records what each file holds;
``scripts/make_transformers_table.py`` turns those records into the table and refuses any entry that would also
match one of that model type's parameters.

A file's names may carry a prefix the table's do not (``model.`` of a causal LM against its base model), or lack
one: a name matches an entry when one ends with the other at a dot, over at least two parts.

Loaded only when a config names a model type; a checkpoint without config.json is classified by name rules alone.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

_MIN_PARTS = 2  # "bias" alone never matches "h.0.attn.bias"; "attn.bias" may


@lru_cache(maxsize=1)
def table() -> Mapping:
    """The packaged table: {"transformers": version, "buffers": {model_type: [name, ...]}, "untied_heads": [class],
    "heads": {class: the tied output head's name}, "embeddings": {model_type: [nn.Embedding weight, ...]},
    "biases": {model_type: {"bias": [name, ...], "weight": [name, ...]}}}."""
    return json.loads(Path(__file__).with_name("transformers_table.json").read_bytes())  # package data (pyproject)


def _suffixes(name: str, most: int | None = None):
    """``a.b.c.d`` -> ``c.d``, ``b.c.d``, ``a.b.c.d``: every dot-suffix of at least _MIN_PARTS parts, and of at most
    ``most`` (a hostile name of 100,000 parts costs ``most`` short joins, not 100,000 long ones)."""
    parts = name.rsplit(".", most) if most is not None else name.split(".")
    for k in range(_MIN_PARTS, len(parts) + 1):
        if most is not None and k > most:
            return
        yield ".".join(parts[-k:])


@lru_cache(maxsize=64)
def buffer_matcher(model_type: str | None) -> Callable[[str], bool] | None:
    """A test for names with whole-number parts zeroed (``layers.0.layer_scalar``): is it one of ``model_type``'s
    persistent buffers? None when the table does not know the model type or lists no buffer for it."""
    if not isinstance(model_type, str):
        return None
    entries = table()["buffers"].get(model_type)
    return matcher(entries) if entries else None


def matcher(entries) -> Callable[[str], bool]:
    """The matching rule over ``entries``: a name matches when it or an entry ends with the other at a dot."""
    exact = frozenset(entries)
    tails = frozenset(s for e in exact for s in _suffixes(e))  # the file lacks a prefix the entry has
    most = max((e.count(".") + 1 for e in exact), default=0)  # no longer suffix can equal an entry

    def is_buffer(shape_of_name: str) -> bool:
        if shape_of_name in tails:
            return True
        return any(s in exact for s in _suffixes(shape_of_name, most))  # the file has a prefix the entry lacks

    return is_buffer


def reason(model_type: str) -> str:
    return f"persistent buffer (transformers {model_type})"


def never_ties_head(architectures: tuple[str, ...]) -> str | None:
    """The first of ``architectures`` whose transformers class, built with ``tie_word_embeddings=True``, still keeps
    its output head apart from the input embedding (so the config's setting does not tie them); else None."""
    untied = _untied()
    return next((a for a in architectures if a in untied), None)


@lru_cache(maxsize=1)
def _untied() -> frozenset[str]:
    return frozenset(table()["untied_heads"])


def head_name(architectures: tuple[str, ...]) -> str | None:
    """The name of the output head that the first known class of ``architectures`` ties to its input embedding
    (``output_projection.weight`` in ``BioGptForCausalLM``), or None."""
    heads = table().get("heads", {})
    return next((heads[a] for a in architectures if a in heads), None)


@lru_cache(maxsize=64)
def embedding_matcher(model_type: str | None) -> Callable[[str], bool] | None:
    """A test for names with whole-number parts zeroed: is it the weight of one of ``model_type``'s ``nn.Embedding``
    modules (what ``num_parameters(exclude_embeddings=True)`` subtracts)? None where the name rules already agree
    with transformers for this model type, or it is not in the table; a test that matches nothing where the model
    has no ``nn.Embedding`` at all (ViT's position embeddings are a bare ``nn.Parameter``)."""
    if not isinstance(model_type, str):
        return None
    entries = table().get("embeddings", {}).get(model_type)
    return None if entries is None else matcher(entries)


@lru_cache(maxsize=64)
def bias_matchers(model_type: str | None) -> tuple[Callable[[str], bool] | None, Callable[[str], bool] | None]:
    """Tests for names with whole-number parts zeroed: (a bias although its name does not end in ``bias``, not a
    bias although it does), for ``model_type``; None where the table lists none."""
    entry = table().get("biases", {}).get(model_type) if isinstance(model_type, str) else None
    if not entry:
        return None, None
    return (matcher(entry["bias"]) if entry.get("bias") else None, matcher(entry["weight"]) if entry.get("weight") else None)
