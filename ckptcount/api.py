"""The library's front: a target in, a :class:`Report` out. The CLI is a thin layer over these two functions."""

from __future__ import annotations

import dataclasses

from . import moe, quant
from .classify import classify
from .count import count
from .errors import CkptError
from .local import load_local
from .records import Checkpoint, Report
from .tying import find_ties


def analyse(checkpoint: Checkpoint) -> Report:
    """Interpret what the readers found: classify, find ties, count. Pure.

    Quantized checkpoints first have packed tensors replaced by logical records and their quantization metadata
    classified apart (``quant``); mixture-of-experts models get total vs active parameters (``moe``). Both are no-ops
    for dense unquantized models.
    """
    prepared = quant.prepare(checkpoint)
    if prepared.findings:
        checkpoint = dataclasses.replace(checkpoint, findings=checkpoint.findings + prepared.findings)
    classified = quant.mark_metadata(classify(prepared.tensors), prepared)
    ties = find_ties(checkpoint, classified)
    counts = count(classified, ties)
    return Report(
        checkpoint=checkpoint,
        classified=classified,
        ties=ties,
        counts=counts,
        quantization=quant.summary(checkpoint, prepared, classified, counts),
        moe=moe.summarize(checkpoint, classified, ties, counts),
    )


def load(target: str) -> Checkpoint:
    """Read the headers of a target: a ``.safetensors`` file, a directory, or a sharded index."""
    return load_local(target)


def audit(target: str) -> Report:
    """Count and classify the parameters of ``target`` from its headers alone. Raises :class:`CkptError`."""
    return analyse(load(target))


def audit_many(targets: list[str]) -> list[Report | CkptError]:
    """Audit each target; one failing target is returned as its error while the others are still reported."""
    out: list[Report | CkptError] = []
    for target in targets:
        try:
            out.append(audit(target))
        except CkptError as e:
            out.append(e)
    return out
