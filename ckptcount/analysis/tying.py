"""Which names are one tensor in the model, and the evidence for each group.

Evidence, strongest first (FACTS.md, "How a tie shows up"):

* ``__metadata__`` aliases written by ``safetensors.torch.save_model`` (``{dropped: kept}``);
* config.json ``tie_word_embeddings`` (top level or ``text_config``; transformers' default true when absent) with the
  output head absent from the files, or stored as a duplicate that the loader will discard;
* encoder-decoder models whose ``encoder/decoder.embed_tokens`` are the ``shared`` table (T5, BART);
* with no config at all, an embedding and a head of equal shape and dtype are only a *candidate* (counted twice).

Safetensors offsets never overlap, so shared offsets are never a tie signal here.
"""

from __future__ import annotations

from collections.abc import Mapping

from operator import methodcaller

from .classify import component_of, gather
from .config import architectures, tie_setting
from ..records import OUTPUT_HEAD, TOKEN_EMBEDDING, Checkpoint, Classification, Classified, TieGroup
from .transformers_table import head_name

ALIAS = "safetensors metadata alias (save_model)"
CANDIDATE = "candidate: verify by content (embedding and head of equal shape and dtype, no config)"
SHARED = "encoder-decoder: embed_tokens are the shared table (transformers always ties them)"
GGUF_TIE = "gguf: output.weight not stored (llama.cpp reuses token_embd.weight)"
HEAD_WEIGHTS = ("lm_head.weight", "embed_out.weight", "output.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight")
LM_ARCH_MARKERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "WithLMHead", "ForMaskedLM", "ForPreTraining")


def _is_head_name(name: str) -> bool:
    return name in _HEAD_SET or name.endswith(_PREFIXED_HEADS)


def _expected_head(prefixes: set[str], config: Mapping | None) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The output head's name when the files do not hold it, and bias ties that come with it (BERT, RoBERTa MLM).

    ``prefixes``: which of ``_HEAD_PREFIXES`` begin some stored name. The architecture's own head name, where the
    transformers table knows it (``output_projection.weight`` in BioGPT, ``proj_out.weight`` in Whisper), wins
    over these guesses."""
    guess = _guess_head(prefixes, config)
    known = head_name(architectures(config))
    if known is not None and known != guess[0]:
        return known, ()
    return guess


def _guess_head(prefixes: set[str], config: Mapping | None) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    if "cls.predictions." in prefixes:
        return "cls.predictions.decoder.weight", (("cls.predictions.decoder.bias", "cls.predictions.bias"),)
    if "lm_head." in prefixes:
        return "lm_head.decoder.weight", (("lm_head.decoder.bias", "lm_head.bias"),)
    if any(m in a for a in architectures(config) for m in LM_ARCH_MARKERS):
        return "lm_head.weight", ()
    return None, ()


_HEAD_PREFIXES = ("cls.predictions.", "lm_head.")
_HEAD_SET = frozenset(HEAD_WEIGHTS)
# The same heads under a prefix (`language_model.lm_head.weight`); a bare `output.weight` only at the top.
_PREFIXED_HEADS = tuple("." + h for h in HEAD_WEIGHTS if h != "output.weight")


def _head_order(name: str) -> tuple[int, int]:
    """Which stored head to pair with the embedding: the least nested, then HEAD_WEIGHTS order."""
    for i, h in enumerate(HEAD_WEIGHTS):
        if name == h or name.endswith("." + h):
            return name[: len(name) - len(h)].count("."), i
    return 1 << 30, 0


class _Groups:
    """Union-find over names; each merge carries its evidence."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.evidence: dict[str, list[str]] = {}
        self.counted: dict[str, bool] = {}
        self.rank: dict[str, int] = {}  # reader order (torch zip views: the covering tensor first, counted)

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str, evidence: str, counted_once: bool = True) -> None:
        ra, rb = self.find(a), self.find(b)
        ev = self.evidence.pop(rb, []) + self.evidence.pop(ra, [])
        counted = self.counted.pop(ra, False) or self.counted.pop(rb, False) or counted_once
        if ra != rb:
            self.parent[rb] = ra
        self.evidence[ra] = ev + ([evidence] if evidence not in ev else [])
        self.counted[ra] = counted

    def add_evidence(self, name: str, evidence: str) -> None:
        ev = self.evidence[self.find(name)]
        if evidence not in ev:
            ev.append(evidence)

    def groups(self, stored: set[str]) -> tuple[TieGroup, ...]:
        members: dict[str, list[str]] = {}
        for x in self.parent:
            members.setdefault(self.find(x), []).append(x)
        out = []
        for root, names in members.items():
            names.sort(key=lambda n: (n not in stored, self.rank.get(n, 0), component_of(n) != TOKEN_EMBEDDING, n))
            out.append(
                TieGroup(
                    names=tuple(names),
                    evidence="; ".join(self.evidence[root]),
                    stored=tuple(n for n in names if n in stored),
                    counted_once=self.counted[root],
                )
            )
        return tuple(sorted(out, key=lambda g: g.names))


def find_ties(checkpoint: Checkpoint, classified: tuple[Classified, ...], index: Classification | None = None) -> tuple[TieGroup, ...]:
    """Tie groups with their evidence. ``index``: classify's :class:`Classification` of ``classified`` (gathered here
    when not given): the stored names and the parameters by component, so no pass over every record is needed."""
    ix = index if index is not None else gather(classified)
    stored = ix.names
    # the few names that start with a head prefix, found by one C-level filter over every name
    prefixes = {p for n in filter(methodcaller("startswith", _HEAD_PREFIXES), stored) for p in _HEAD_PREFIXES if n.startswith(p)}
    if ix.unique:  # a head name's only record; a head is never a buffer
        by_name = {c.tensor.name: c for c in ix.parameters.get(OUTPUT_HEAD, ()) if _is_head_name(c.tensor.name)}
    else:  # the last record of each head name, as a dict of every name would keep
        by_name = {c.tensor.name: c for c in ix.records if _is_head_name(c.tensor.name)}
    embeddings = [c for c in ix.parameters.get(TOKEN_EMBEDDING, ()) if len(c.tensor.shape) == 2]
    groups = _Groups()

    for g in checkpoint.ties:  # ties a reader saw directly (e.g. shared storage in a torch zip)
        for other in g.names[1:]:
            groups.join(g.names[0], other, g.evidence, g.counted_once)
        if g.evidence.startswith("shared storage (views"):  # torch zip: names[0] covers the views; keep it first
            groups.rank.update({n: 1 for n in g.names[1:]})

    for f in checkpoint.files:
        for dropped, kept in f.metadata.items():
            if kept in stored and dropped not in stored and dropped != kept:
                groups.join(kept, dropped, ALIAS)

    if any(f.format == "gguf" for f in checkpoint.files) and "token_embd.weight" in stored and "output.weight" not in stored:
        groups.join("token_embd.weight", "output.weight", GGUF_TIE)

    tied, how = tie_setting(checkpoint.config)
    embedding = min(embeddings, key=lambda c: (c.tensor.name.count("."), c.tensor.name), default=None)
    head_name, bias_ties = _expected_head(prefixes, checkpoint.config)
    heads = [by_name[n] for n in sorted(by_name, key=_head_order) if by_name[n].component == OUTPUT_HEAD]
    head = next((h for h in heads if h.tensor.name not in groups.parent), None) if heads else None

    if embedding is not None and tied is not False:
        e = embedding.tensor
        if head is not None:
            h = head.tensor
            if (h.shape, h.dtype) == (e.shape, e.dtype):
                if tied:
                    groups.join(e.name, h.name, how)
                    groups.add_evidence(e.name, "head also stored: a duplicate the loader discards (verify by content)")
                else:
                    groups.join(e.name, h.name, CANDIDATE, counted_once=False)
        elif tied and head_name is not None and not heads and head_name not in groups.parent:
            groups.join(e.name, head_name, how)
            groups.add_evidence(e.name, "output head not stored")
            for target, source in bias_ties:
                if source in stored and target not in stored:
                    groups.join(source, target, how)
                    groups.add_evidence(source, "decoder bias not stored")

    if embedding is not None and e_is_shared(embedding.tensor.name):
        prefix = embedding.tensor.name[: -len("shared.weight")]
        for side in ("encoder", "decoder"):
            alias = f"{prefix}{side}.embed_tokens.weight"
            if any(n.startswith(f"{prefix}{side}.") for n in stored):
                groups.join(embedding.tensor.name, alias, SHARED)

    # an alias group holding both a head and an embedding is also what the config asks for: say so
    if tied:
        for g in groups.groups(stored):
            comps = {component_of(n) for n in g.names}
            if {TOKEN_EMBEDDING, OUTPUT_HEAD} <= comps:
                groups.add_evidence(g.names[0], how)
    return groups.groups(stored)


def e_is_shared(name: str) -> bool:
    return name == "shared.weight" or name.endswith(".shared.weight")
