"""Quantized checkpoints: logical parameters from packed tensors, quantization metadata kept apart.

Stored elements are not parameters when weights are packed. Driven by config.json ``quantization_config`` (top level
or under ``text_config``; MLX writes ``quantization``), each row below says how one method stores a Linear of
``out_features`` N and ``in_features`` K with ``b``-bit values (``pack`` = 32 / b values per 32-bit word):

=====================  ==========================================  ===========================================
method                 packed weight (stored)                      quantization metadata (not parameters)
=====================  ==========================================  ===========================================
gptq (auto-gptq)       ``qweight`` I32 [K*b/32, N]                 ``qzeros`` [K/g, N*b/32], ``scales`` [K/g, N],
                                                                   ``g_idx`` [K]
awq (autoawq gemm)     ``qweight`` I32 [K, N*b/32]                 ``qzeros``, ``scales``
mlx                    ``weight`` U32 [N, K*b/32]                  ``scales``, ``biases`` [N, K/g]
bitsandbytes 4-bit     ``weight`` U8 [(N*K+1)/2, 1]                ``weight.absmax``, ``weight.quant_map``,
                                                                   ``weight.nested_*``, ``weight.quant_state.*``
bitsandbytes 8-bit     ``weight`` I8 [N, K]                        ``SCB``, ``weight_format``
fp8 / fbgemm_fp8       ``weight`` F8_E4M3 [N, K]                   ``weight_scale(_inv)``, ``input_scale``...
mxfp4 (gpt-oss)        ``*_blocks`` U8 [..., K/32, 16]             ``*_scales`` U8 [..., K/32]
compressed-tensors     ``weight_packed`` I32 [N, K*b/32] (pack-    ``weight_scale``, ``weight_zero_point``,
                       quantized), U8 [N, K/2] (nvfp4), or I8/F8   ``weight_g_idx``, ``weight_shape``,
                       ``weight`` [N, K] (int-/float-quantized)    ``*_global_scale``, ``input_scale``...
=====================  ==========================================  ===========================================

A packed tensor becomes a record with its logical shape (``numel`` = the parameters it holds), its real stored bytes,
and a dtype label such as ``gptq-int4(I32)``, so classification and counting work unchanged. bitsandbytes 4-bit keeps
the original shape only in a quant-state blob inside the data: its logical shape is the flat ``(2 x bytes,)``, exact
for an even element count. GGUF records already carry logical shapes; here they only get a summary (bits per weight
by ggml type).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ..formats.gguf import TYPE_BY_NAME, UNQUANTIZED, kv_value
from ..records import Checkpoint, Counts, Finding, TensorRecord

# llama.cpp ``llama_ftype`` (general.file_type) names; gguf-py ``LlamaFileType``.
GGUF_FILE_TYPES: Mapping[int, str] = MappingProxyType(
    {
        0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
        9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
        14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
        19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
        24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
        29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
        37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0",
    }
)

# Suffixes (after the module name) of quantization metadata, per method. Only applied when the config names the method.
_META: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gptq": (".qzeros", ".scales", ".g_idx"),
        "awq": (".qzeros", ".scales"),
        "mlx": (".scales", ".biases"),
        "bnb-4bit": (".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map"),
        "bnb-8bit": (".SCB", ".weight_format"),
        "fp8": (".weight_scale", ".weight_scale_inv", ".input_scale", ".output_scale", ".k_scale", ".v_scale", ".activation_scale_ub"),
        "mxfp4": ("_scales",),
        "compressed-tensors": (
            ".weight_scale", ".weight_zero_point", ".weight_g_idx", ".weight_shape", ".weight_global_scale",
            ".input_scale", ".input_zero_point", ".input_global_scale", ".output_scale", ".output_zero_point",
            ".k_scale", ".v_scale",
        ),
    }
)
_BNB_STATE = re.compile(r"\.weight\.quant_state\.[^.]+$")


@dataclass(frozen=True)
class Scheme:
    """What the config says: the method, its bits and group size, and the words that say where it was found."""

    method: str
    bits: int | None
    group_size: int | None
    evidence: str
    raw: Mapping = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Prepared:
    """Tensors with packed ones replaced by logical records, and which names are quantization metadata."""

    tensors: tuple[TensorRecord, ...]
    scheme: Scheme | None
    packed: Mapping[str, TensorRecord]  # logical name -> the record as stored
    metadata: Mapping[str, str]  # name -> why it is metadata
    findings: tuple[Finding, ...] = ()
    # FP8: metadata known by the name's last part alone (ending -> reason). prepare then makes no pass over the names:
    # classify applies it once per name shape (classify_all's buffers_by_last) and api.analyse fills ``metadata``
    metadata_by_last: Mapping[str, str] | None = None


def _int(x: object) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _ct_bits(qc: Mapping) -> int | None:
    """compressed-tensors: the weights' num_bits when every config group agrees."""
    groups = qc.get("config_groups")
    bits = set()
    if isinstance(groups, Mapping):
        for g in groups.values():
            w = g.get("weights") if isinstance(g, Mapping) else None
            if isinstance(w, Mapping) and _int(w.get("num_bits")):
                bits.add(w["num_bits"])
    return bits.pop() if len(bits) == 1 else None


def scheme_of(config: Mapping | None) -> Scheme | None:
    """The quantization scheme a config declares, or None for an unquantized model."""
    if not isinstance(config, Mapping):
        return None
    for scope, cfg in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(cfg, Mapping):
            continue
        for key in ("quantization_config", "quantization"):
            qc = cfg.get(key)
            if not isinstance(qc, Mapping):
                continue
            where = f"config: {scope}{key}"
            qm = qc.get("quant_method")
            group = _int(qc.get("group_size")) or _int(qc.get("q_group_size"))
            if qm is None and _int(qc.get("bits")) and key == "quantization":
                return Scheme("mlx", qc["bits"], group, f"{where} (mlx: bits={qc['bits']})", qc)
            if not isinstance(qm, str):
                continue
            qm = qm.lower()
            if qm == "bitsandbytes":
                four = qc.get("load_in_4bit") or qc.get("_load_in_4bit")
                eight = qc.get("load_in_8bit") or qc.get("_load_in_8bit")
                if four:
                    kind = qc.get("bnb_4bit_quant_type", "nf4")
                    return Scheme("bnb-4bit", 4, None, f"{where}.quant_method=bitsandbytes, load_in_4bit ({kind})", qc)
                if eight:
                    return Scheme("bnb-8bit", 8, None, f"{where}.quant_method=bitsandbytes, load_in_8bit", qc)
                continue
            if qm in ("gptq", "awq"):
                bits = _int(qc.get("bits")) or _int(qc.get("w_bit"))
                return Scheme(qm, bits, group, f"{where}.quant_method={qm}, bits={bits}", qc)
            if qm in ("fp8", "fbgemm_fp8"):
                return Scheme("fp8", 8, None, f"{where}.quant_method={qm}", qc)
            if qm == "mxfp4":
                return Scheme("mxfp4", 4, 32, f"{where}.quant_method=mxfp4", qc)
            if qm == "compressed-tensors":
                bits = _ct_bits(qc)
                return Scheme("compressed-tensors", bits, None, f"{where}.quant_method=compressed-tensors, format={qc.get('format')}", qc)
            return Scheme(qm, _int(qc.get("bits")), group, f"{where}.quant_method={qm} (layout not known: counted as stored)", qc)
    return None


def _mlx_bits(scheme: Scheme, stem: str) -> int | None:
    """MLX allows per-module overrides: ``"quantization": {"bits": 4, "model.layers.0.mlp.gate": {"bits": 8}}``."""
    override = scheme.raw.get(stem)
    if isinstance(override, Mapping) and _int(override.get("bits")):
        return override["bits"]
    return scheme.bits


def _logical(t: TensorRecord, scheme: Scheme, names: set[str], parents: frozenset[str] | set[str] = frozenset()) -> tuple[tuple[int, ...], str] | None | str:
    """The logical (shape, dtype label) of a packed tensor, None if ``t`` is not packed, or a message if it cannot be.

    ``parents``: for bitsandbytes 4-bit, every ``....weight`` that some other name continues (``.weight.absmax``)."""
    m, s = scheme.method, t.shape
    name = t.name

    def words(bits: int | None, label: str, rows_packed: bool):
        if not bits or bits > 32:
            return f"tensor {name!r}: {m} bits unknown ({bits}); counted as stored"
        if len(s) != 2:
            return f"tensor {name!r}: packed {t.dtype} tensor of rank {len(s)}, expected 2; counted as stored"
        r, c = s
        if (r if rows_packed else c) * 32 % bits:
            return f"tensor {name!r}: {s} does not unpack to whole {bits}-bit values; counted as stored"
        return (r * 32 // bits, c) if rows_packed else (r, c * 32 // bits), f"{label}-int{bits}({t.dtype})"

    if m == "gptq" and name.endswith(".qweight") and t.dtype == "I32":
        shape_label = words(scheme.bits, "gptq", rows_packed=True)
        return shape_label if isinstance(shape_label, str) else ((shape_label[0][1], shape_label[0][0]), shape_label[1])
    if m == "awq" and name.endswith(".qweight") and t.dtype == "I32":
        gemv = str(scheme.raw.get("version", "gemm")).lower() == "gemv"
        shape_label = words(scheme.bits, "awq", rows_packed=False)
        if isinstance(shape_label, str) or gemv:
            return shape_label  # gemv: [N, K*b/32]
        (k, n), label = shape_label
        return (n, k), label  # gemm: qweight [K, N*b/32] -> nn.Linear [N, K]
    if m == "mlx" and t.dtype == "U32" and name.endswith(".weight") and name[: -len(".weight")] + ".scales" in names:
        return words(_mlx_bits(scheme, name[: -len(".weight")]), "mlx", rows_packed=False)
    if m == "bnb-4bit" and t.dtype == "U8" and name.endswith(".weight"):
        if name in parents:
            kind = str(scheme.raw.get("bnb_4bit_quant_type", "nf4"))
            return (t.numel * 2,), f"bnb-{kind}({t.dtype})"
    if m == "bnb-8bit" and t.dtype == "I8" and name.endswith(".weight") and name[: -len("weight")] + "SCB" in names:
        return s, f"bnb-int8({t.dtype})"
    if m == "mxfp4" and t.dtype == "U8" and name.endswith("_blocks") and len(s) >= 2:
        return s[:-2] + (s[-2] * s[-1] * 2,), f"mxfp4({t.dtype})"  # [..., K/32, 16 bytes] -> [..., K]
    if m == "compressed-tensors":
        if name.endswith(".weight_packed"):
            if t.dtype == "U8":  # nvfp4-pack-quantized: two 4-bit values per byte along K
                return (s[0], s[1] * 2) if len(s) == 2 else None, f"nvfp4({t.dtype})"
            return words(scheme.bits, "ct", rows_packed=False)
        if name.endswith(".weight") and t.dtype in ("I8", "U8") and name[: -len("weight")] + "weight_scale" in names:
            return s, f"ct-int8({t.dtype})"
    return None


def _meta_reason(name: str, scheme: Scheme, names: set[str]) -> str | None:
    if scheme.method == "bnb-4bit" and _BNB_STATE.search(name):
        return "quantization metadata (bitsandbytes quant state)"
    for suffix in _META.get(scheme.method, ()):
        if name.endswith(suffix):
            if scheme.method == "mlx" and name[: -len(suffix)] + ".weight" not in names:
                continue  # an MLX `.biases`/`.scales` only belongs to a quantized layer that has a `.weight`
            return f"quantization metadata ({scheme.method} {suffix.lstrip('._')})"
    return None


# Name endings a packed tensor of each method can have (see _logical): other names skip it.
_PACKED_ENDINGS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gptq": (".qweight",),
        "awq": (".qweight",),
        "mlx": (".weight",),
        "bnb-4bit": (".weight",),
        "bnb-8bit": (".weight",),
        "mxfp4": ("_blocks",),
        "compressed-tensors": (".weight_packed", ".weight"),
    }
)
# Methods whose metadata suffixes are each one dotted last part and need no neighbour (not MLX, not bitsandbytes
# 4-bit): suffix -> reason, the same words as _meta_reason (FP8 repos hold 45,000 such tensors).
_BY_LAST_PART: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        method: MappingProxyType({sfx: f"quantization metadata ({method} {sfx.lstrip('._')})" for sfx in suffixes})
        for method, suffixes in _META.items()
        if method not in ("mlx", "bnb-4bit") and all(sfx.startswith(".") and sfx.count(".") == 1 for sfx in suffixes)
    }
)
_NEEDS_NAMES = frozenset({"mlx", "bnb-4bit", "bnb-8bit", "compressed-tensors"})  # _meta_reason and _logical
_HINT_ENDINGS = (".qweight", ".weight_packed", "_blocks")  # packed-looking names when no config names a method


def _weight_parents(names) -> set[str]:
    """Every ``<module>.weight`` that begins a longer name (``<module>.weight.absmax``): one scan of the names, not one
    per weight (which was quadratic in the number of tensors)."""
    out = set()
    for n in names:
        j = n.find(".weight.")
        while j >= 0:
            out.add(n[: j + 7])
            j = n.find(".weight.", j + 1)
    return out


def prepare(checkpoint: Checkpoint) -> Prepared:
    """Replace packed tensors by logical records and mark quantization metadata. A no-op for unquantized models."""
    scheme = scheme_of(checkpoint.config)
    tensors = checkpoint.tensors
    if scheme is None:
        hinted = [t.name for t in tensors if t.name.endswith(_HINT_ENDINGS)]
        findings = ()
        if hinted and not any(f.format == "gguf" for f in checkpoint.files):
            findings = (Finding("quantization", f"{len(hinted)} packed-looking tensors (e.g. {hinted[0]!r}) but no quantization_config: counted as stored"),)
        return Prepared(tensors, None, MappingProxyType({}), MappingProxyType({}), findings)
    # which names exist: only the methods whose rules look at a tensor's neighbours need it
    names = {t.name for t in tensors} if scheme.method in _NEEDS_NAMES else frozenset()
    parents = _weight_parents(names) if scheme.method == "bnb-4bit" else frozenset()
    out, packed, metadata, findings = [], {}, {}, []
    meta_endings = _META.get(scheme.method, ())
    packed_endings = _PACKED_ENDINGS.get(scheme.method, ())
    bnb4 = scheme.method == "bnb-4bit"
    by_last = _BY_LAST_PART.get(scheme.method)
    if by_last is not None and not packed_endings and not any(ch.isdigit() for ending in by_last for ch in ending):
        # fp8: nothing to unpack, and the metadata is found by classify (endings without digits: one answer per
        # name shape)
        return Prepared(tensors, scheme, MappingProxyType({}), MappingProxyType({}), tuple(_nothing_packed(scheme)), by_last)
    for t in tensors:
        name = t.name
        if by_last is not None:  # the method's metadata is known by the name's last part alone: one dict lookup
            dot = name.rfind(".")
            reason = by_last.get(name[dot:]) if dot >= 0 else None
            if reason is not None:
                metadata[name] = reason
                out.append(t)
                continue
        elif (meta_endings and name.endswith(meta_endings)) or (bnb4 and ".weight.quant_state." in name):
            reason = _meta_reason(name, scheme, names)
            if reason is not None:
                metadata[name] = reason
                out.append(t)
                continue
        if not (packed_endings and name.endswith(packed_endings)):
            out.append(t)
            continue
        logical = _logical(t, scheme, names, parents)
        if isinstance(logical, str):
            findings.append(Finding("quantization", logical))
        elif logical is not None and logical[0] is not None:
            shape, label = logical
            out.append(TensorRecord(t.name, label, tuple(shape), t.file, t.begin, t.end, stored_bytes=t.nbytes, storage=t.storage))
            packed[t.name] = t
            continue
        out.append(t)
    if not packed:
        findings.extend(_nothing_packed(scheme))
    return Prepared(tuple(out) if packed else tensors, scheme, MappingProxyType(packed), MappingProxyType(metadata), tuple(findings))


def _nothing_packed(scheme: Scheme) -> list[Finding]:
    """What to say when no packed tensor was recognised: nothing for fp8, which packs nothing."""
    if scheme.method == "fp8":
        return []
    return [Finding("quantization", f"{scheme.evidence} but no packed tensors were recognised: counted as stored")]


def _bits(nbytes: int, elements: int) -> float | None:
    return round(8 * nbytes / elements, 4) if elements else None


def summary(checkpoint: Checkpoint, prepared: Prepared, counts: Counts) -> dict | None:
    """Logical parameters, stored elements and bytes, effective bits per weight, and the metadata tensors apart.

    ``bits_per_weight`` = 8 x (bytes of the quantized tensors + their metadata) / their logical elements;
    ``bits_per_parameter`` = 8 x (bytes of every parameter tensor + metadata) / parameters.
    None for an unquantized, non-GGUF checkpoint (the report then has no ``quantization`` key).
    """
    is_gguf = any(f.format == "gguf" for f in checkpoint.files)
    if prepared.scheme is None and not is_gguf:
        return None
    packed, metadata = prepared.packed, prepared.metadata
    # From the counts' per-dtype and per-buffer-kind totals: no pass over the tensors (90,000-tensor FP8 repos).
    # A packed tensor's dtype is its label (gptq-int4(I32)...), which no unpacked tensor has.
    packed_types = {rec.dtype for rec in prepared.tensors if rec.name in packed} if packed else set()
    by_type: dict[str, dict] = {}
    p_bytes = q_tensors = q_elements = q_bytes = 0
    for dt, tally in counts.stored_parameters_by_dtype.items():
        by_type[dt] = {"tensors": tally.tensors, "elements": tally.elements, "bytes": tally.bytes}
        p_bytes += tally.bytes
        if (dt not in UNQUANTIZED) if is_gguf else (dt.startswith("F8") or dt in packed_types):
            q_tensors += tally.tensors
            q_elements += tally.elements
            q_bytes += tally.bytes
    meta_reasons = set(metadata.values())
    meta_groups = [b for b in counts.buffers if b.reason in meta_reasons]
    m_tensors = sum(b.tensors for b in meta_groups)
    m_bytes = sum(b.bytes for b in meta_groups)
    # in file order: the metadata dict's order, unless a name is stored twice (then every record, from the tensors)
    m_names = list(metadata) if m_tensors == len(metadata) else [t.name for t in prepared.tensors if t.name in metadata]
    for k, d in by_type.items():
        d["bits_per_weight"] = _bits(d["bytes"], d["elements"])
        if k in TYPE_BY_NAME and is_gguf:
            d["block_size"], d["block_bytes"] = TYPE_BY_NAME[k]
    out: dict = {}
    if is_gguf:
        files = checkpoint.files
        ft = kv_value(files, "general.file_type")
        out.update(
            {
                "method": "gguf",
                "evidence": "gguf tensor types",
                "architecture": kv_value(files, "general.architecture"),
                "context_length": kv_value(files, "{arch}.context_length"),
                "file_type": GGUF_FILE_TYPES.get(ft, ft) if ft is not None else None,
            }
        )
    else:
        s = prepared.scheme
        out.update({"method": s.method, "bits": s.bits, "group_size": s.group_size, "evidence": s.evidence})
    out.update(
        {
            "logical_parameters": counts.parameters,
            # the stored totals (tied views of one storage once), with packed tensors at their stored elements
            "stored_elements_in_file": counts.stored_elements
            + (sum(t.numel for t in packed.values()) - sum(rec.numel for rec in prepared.tensors if rec.name in packed) if packed else 0),
            "quantized": {"tensors": q_tensors, "elements": q_elements, "bytes": q_bytes},
            "metadata": {
                "tensors": m_tensors,
                "elements": sum(b.elements for b in meta_groups),
                "bytes": m_bytes,
                "names": m_names,  # in file order
            },
            "bits_per_weight": _bits(q_bytes + m_bytes, q_elements),
            "bits_per_parameter": _bits(p_bytes + m_bytes, counts.parameters),
            "by_type": dict(sorted(by_type.items())),
        }
    )
    return out
