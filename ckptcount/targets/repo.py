"""What a folder or repo holds when it is not one model, and which files of each part are counted.

Four layouts are recognised by a file at the top (or, for GGUF, by the files themselves):

* ``model_index.json``: a diffusers pipeline. Every component it names whose folder holds weights is a part (``unet``,
  ``vae``, ``text_encoder``...); the others (tokenizer, scheduler, feature extractor) are listed as not counted, with
  their class. Weight variants (``diffusion_pytorch_model.fp16.safetensors``, ``model.fp16.safetensors``, a sharded
  ``….safetensors.index.fp16.json``) are recognised: ``variant`` picks them, else the plain files are counted and the
  other variants listed with their sizes.
* ``modules.json``: a sentence-transformers model. Every module whose folder holds weights (the transformer, usually at
  the root; ``2_Dense/``) is a part; modules without weights (``1_Pooling``, ``3_Normalize``) are listed as such.
* ``adapter_config.json``: a PEFT adapter. One part, the adapter's weights; its settings are kept for
  :mod:`ckptcount.analysis.adapter`.
* several ``.gguf`` files (or split sets) and no other weights: a set of quantizations of one model, each a part,
  never summed (``--file`` picks one).

:func:`plan` is pure over a listing (``{path: size}``, relative to the target) and a reader of the small JSON files,
so a local folder (:func:`local_plan`) and a Hub repo (``ckptcount.targets.hub.hub_plan``) are planned alike. Each
part is then read as a target of its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import ConfigError, TargetNotFound
from ..formats.base import SHARD_PATTERN, auxiliary, format_of, is_index
from ..records import Finding
from ..sources.files import LocalFile, cache_snapshot, entries, inside

MARKERS = ("model_index.json", "modules.json", "adapter_config.json")
MAX_LAYOUT_JSON = 4 * 1024 * 1024
MAX_SUBFOLDERS = 256  # a folder with more subfolders than this is not a pipeline: only the first are listed
STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")  # diffusers' weight name, then transformers'
# <stem>[-0000k-of-0000n][.<variant>].<ext>, as diffusers' _add_variant names them (and the variant-then-shard form)
_WEIGHT = re.compile(
    r"^(?P<stem>diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<v1>[A-Za-z0-9_]+))?(?P<shard>-\d{5}-of-\d{5})?"
    r"(?:\.(?P<v2>[A-Za-z0-9_]+))?\.(?P<ext>safetensors|bin)$"
)
_INDEX = re.compile(r"^(?P<stem>diffusion_pytorch_model|model|pytorch_model)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<v>[A-Za-z0-9_]+))?\.json$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Part:
    """One model of the target: ``path`` (a folder, or a weight file or index, relative to the target; "" the target
    itself) is read as a target of its own."""

    name: str
    path: str
    role: str  # "pipeline-component" | "module" | "adapter" | "quantization"
    library: str | None = None
    class_name: str | None = None


@dataclass(frozen=True)
class Plan:
    kind: str  # "diffusers-pipeline" | "sentence-transformers" | "peft-adapter" | "gguf-set"
    index_file: str | None
    parts: tuple[Part, ...]
    not_counted: tuple[tuple[str, str], ...] = ()
    variants: tuple[tuple[str, str, int, int], ...] = ()  # (component, variant, files, bytes) not counted
    variant: str | None = None
    alternatives: bool = False
    findings: tuple[Finding, ...] = ()
    settings: Mapping | None = None  # the layout file's JSON (adapter_config.json: the adapter's settings)
    pipeline_class: str | None = None
    listing: Mapping[str, int | None] | None = None  # every file the plan saw, relative to the target, with sizes


def wanted(names) -> bool:
    """Whether the files at the top of a folder or repo call for a plan (cheap: names only)."""
    names = set(names)
    return any(m in names for m in MARKERS) or len(gguf_groups(names)) > 1


def weight_files(names) -> list[str]:
    """The names that are weights (a safetensors, pytorch or GGUF file, or an index of them), not auxiliary files."""
    return [n for n in names if format_of(n) in ("safetensors", "pytorch", "gguf") and not auxiliary(n) and (not n.endswith(".json") or is_index(n))]


def gguf_groups(names) -> dict[str, list[str]]:
    """The GGUF files at the top, as sets: a split set (``x-00001-of-00003.gguf``...) is one entry, under its first
    shard's name; every other ``.gguf`` file is its own. Empty when other weights are there: those are counted."""
    names = sorted(n for n in names if "/" not in n)
    if any(format_of(n) in ("safetensors", "pytorch") and not n.endswith(".json") and not auxiliary(n) for n in names):
        return {}
    groups: dict[str, list[str]] = {}
    for n in names:
        if format_of(n) != "gguf":
            continue
        stem = re.sub(r"-\d{5}-of-\d{5}\.gguf$", "", n) if SHARD_PATTERN.match(n) else n
        groups.setdefault(stem, []).append(n)
    return {files[0]: files for files in groups.values()}


def plan(listing: Mapping[str, int | None], read_json: Callable[[str], object], where: str, variant: str | None = None) -> Plan | None:
    """What to count in a target whose files (relative paths, with sizes) are ``listing``; None for one model."""
    found = _plan(listing, read_json, where, variant)
    return replace(found, listing=MappingProxyType(dict(listing))) if found is not None else None


def _plan(listing, read_json, where: str, variant: str | None) -> Plan | None:
    top = {n for n in listing if "/" not in n}
    if "model_index.json" in top:
        return _pipeline(listing, read_json("model_index.json"), where, variant)
    if "modules.json" in top:
        return _sentence_transformers(listing, read_json("modules.json"), where)
    if "adapter_config.json" in top and any(w in top for w in ADAPTER_WEIGHTS):
        settings = read_json("adapter_config.json")
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}/adapter_config.json", "not a JSON object")
        weights = next(w for w in ADAPTER_WEIGHTS if w in top)
        # a model's own weights beside the adapter (a merged copy pushed with it): said, never counted as the adapter
        others = sorted(n for n in weight_files(top) if n not in ADAPTER_WEIGHTS)
        findings = (Finding("not-counted", f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}: a model's weights beside the adapter, not counted (--file {others[0]} counts them)"),) if others else ()
        return Plan("peft-adapter", "adapter_config.json", (Part("adapter", weights, "adapter", "peft"),), settings=settings, findings=findings)
    groups = gguf_groups(top)
    if len(groups) > 1:
        parts = tuple(Part(first, first, "quantization", "llama.cpp") for first in groups)
        return Plan("gguf-set", None, parts, alternatives=True)
    return None


def _pipeline(listing, index, where: str, variant: str | None) -> Plan:
    if not isinstance(index, dict):
        raise ConfigError(f"{where}/model_index.json", "not a JSON object")
    parts, not_counted, variants, findings = [], [], [], []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):  # _class_name, _diffusers_version; flags (requires_safety_checker)
            continue
        library, cls = [v if isinstance(v, str) else None for v in (value + [None, None])[:2]]
        if "/" in name or name in (".", "..") or not name:
            findings.append(Finding("unsafe-path", f"model_index.json names component {name!r}: not a plain folder name, not read"))
            continue
        files = {p[len(name) + 1 :]: s for p, s in listing.items() if p.startswith(name + "/") and "/" not in p[len(name) + 1 :]}
        chosen, others, missing = pick_weights(files, variant)
        what = f"{cls} ({library})" if cls and library else (cls or "not set")
        if chosen is None:
            if others:  # weight files, but none this plan can read alone (shards without their index)
                findings.append(Finding("not-counted", f"{name}: {sum(k for k, _ in others.values())} weight files and no index or single file: not counted"))
            not_counted.append((name, f"{what}: no weights" if not others and (files or cls) else f"{what}: no index for its shards" if others else "not set in model_index.json"))
            continue
        if missing:
            findings.append(Finding("variant-missing", f"{name} has no {variant} variant: its plain files are counted"))
        parts.append(Part(name, f"{name}/{chosen}", "pipeline-component", library, cls))
        variants += [(name, v, n, size) for v, (n, size) in sorted(others.items(), key=lambda kv: (kv[0] == "plain", kv[0]))]
    if not parts:
        raise TargetNotFound(where, "model_index.json names no component with weights here")
    cls = index.get("_class_name") if isinstance(index.get("_class_name"), str) else None
    return Plan(
        "diffusers-pipeline", "model_index.json", tuple(parts), tuple(not_counted), tuple(variants), variant,
        findings=tuple(findings), pipeline_class=cls,
    )


def pick_weights(files: Mapping[str, int | None], variant: str | None) -> tuple[str | None, dict[str, tuple[int, int]], bool]:
    """(the index or single weight file of ``variant`` (None: the plain one), the other variants present as
    {variant: (files, bytes)}, whether ``variant`` was asked for and is missing so the plain files were taken)."""
    by_variant: dict[str | None, dict[str, list[str]]] = {}
    for n in files:
        if m := _INDEX.match(n):
            by_variant.setdefault(m["v"], {}).setdefault("index", []).append(n)
        elif m := _WEIGHT.match(n):
            v = m["v1"] or m["v2"]
            by_variant.setdefault(v, {}).setdefault("shards" if m["shard"] else "single", []).append(n)

    def choose(v: str | None) -> str | None:
        found = by_variant.get(v, {})
        for kind in ("index", "single"):
            for ext in ("safetensors", "bin"):
                for stem in STEMS:
                    for n in sorted(found.get(kind, ())):
                        if n.startswith(stem + ".") and f".{ext}" in n:
                            return n
        return None

    chosen, missing = choose(variant), False
    if chosen is None and variant is not None:
        chosen, missing = choose(None), True
    taken = variant if not missing else None
    others = {}
    for v, kinds in by_variant.items():
        if v == taken and chosen is not None:
            continue
        names = [n for k in ("single", "shards") for n in kinds.get(k, ())]
        if names:
            others[v or "plain"] = (len(names), sum(files[n] or 0 for n in names))
    return chosen, others, missing


def _sentence_transformers(listing, modules, where: str) -> Plan:
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(f"{where}/modules.json", "not a list of module objects")
    parts, not_counted, findings = [], [], []
    for m in modules:
        path = m.get("path") if isinstance(m.get("path"), str) else ""
        path = path.strip("/")
        kind = m.get("type") if isinstance(m.get("type"), str) else None
        short = kind.rsplit(".", 1)[-1] if kind else "module"
        if any(p in ("", ".", "..") for p in path.split("/")) and path:
            findings.append(Finding("unsafe-path", f"modules.json names module path {path!r}: not read"))
            continue
        prefix = f"{path}/" if path else ""
        here = [p[len(prefix) :] for p in listing if p.startswith(prefix) and "/" not in p[len(prefix) :]]
        weights = weight_files(here)
        if path == "" and any(w in here for w in ADAPTER_WEIGHTS):
            weights = [w for w in weights if w not in ADAPTER_WEIGHTS] or weights
        label = path or str(m.get("name", "0"))
        if weights:
            parts.append(Part(path, path, "module", "sentence_transformers", short))
        else:
            not_counted.append((label, f"{short}: no weights"))
    if not parts:
        raise TargetNotFound(where, "modules.json names no module with weights here")
    return Plan("sentence-transformers", "modules.json", tuple(parts), tuple(not_counted), findings=tuple(findings))


# --- local folders -------------------------------------------------------------------------------------------------


def local_plan(target: str, variant: str | None = None) -> Plan | None:
    """The plan of a local folder (the top and one level of subfolders are listed), or None for one model."""
    path = Path(target)
    if not path.is_dir():
        return None
    root = cache_snapshot(path, target) or path
    held = entries(root, target)
    top = {p.name: p for p in held if p.is_file()}
    if not wanted(top):
        return None
    listing: dict[str, int | None] = {n: p.stat().st_size for n, p in top.items()}
    for sub in sorted((p for p in held if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)[:MAX_SUBFOLDERS]:
        for f in entries(sub, f"{target}/{sub.name}"):
            if f.is_file():
                listing[f"{sub.name}/{f.name}"] = f.stat().st_size

    def read_json(name: str):
        where = str(root / name)
        source = LocalFile(inside(root, name, where), where)
        if source.size() > MAX_LAYOUT_JSON:
            raise ConfigError(where, f"file is {source.size()} bytes, over the {MAX_LAYOUT_JSON}-byte limit")
        return parse_json(source.read(0, source.size()), where)

    return plan(listing, read_json, target, variant)


def parse_json(raw: bytes, where: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise ConfigError(where, f"not valid JSON ({type(e).__name__})") from None


def local_part(target: str, part: Part) -> str:
    """The local target that reads ``part``: the folder itself, or a path inside it."""
    if not part.path:
        return target
    snapshot = cache_snapshot(Path(target), target)
    inside(snapshot or Path(target), part.path, target)  # a name from model_index.json or modules.json: stays inside
    return str(snapshot / part.path) if snapshot else str(Path(target) / part.path)
