"""The library's front: a target in, a :class:`Report` out. The CLI is a thin layer over these two functions."""

from __future__ import annotations

import dataclasses

from .errors import CkptError, TargetNotFound
from .support.gcpause import gc_paused
from .targets.local import load_local
from .records import Checkpoint, Report


def analyse(checkpoint: Checkpoint) -> Report:
    """Interpret what the readers found: classify, find ties, count. Pure.

    Quantized checkpoints first have packed tensors replaced by logical records and their quantization metadata
    classified apart (``quant``); mixture-of-experts models get total vs active parameters (``moe``). Both are no-ops
    for dense unquantized models.
    """
    # imported here, not at start-up: a Hub audit imports them while its first requests are in flight (hub._warm_up)
    from .analysis import moe, quant
    from .analysis.classify import classify_all
    from .analysis.config import model_type
    from .analysis.count import count
    from .analysis.transformers_table import embedding_matcher
    from .analysis.tying import find_ties

    prepared = quant.prepare(checkpoint)
    if prepared.findings:
        checkpoint = dataclasses.replace(checkpoint, findings=checkpoint.findings + prepared.findings)
    mt = model_type(checkpoint.config)
    index = classify_all(prepared.tensors, mt, prepared.metadata, prepared.metadata_by_last)
    if prepared.metadata_by_last is not None:  # FP8 metadata, found by classify once per name shape
        prepared = dataclasses.replace(prepared, metadata=index.buffers_by_last)
    classified = index.records
    ties = find_ties(checkpoint, classified, index)
    counts = count(classified, ties, index, embedding_matcher(mt))
    return Report(
        checkpoint=checkpoint,
        classified=classified,
        ties=ties,
        counts=counts,
        quantization=quant.summary(checkpoint, prepared, counts),
        moe=moe.summarize(checkpoint, classified, ties, counts, index),
    )


def load(target: str, *, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """Read the headers of a target: a ``.safetensors`` file, a directory, or a sharded index.

    An existing local path stays local. Otherwise repo ids (``org/name``), ``hf://`` paths and Hub URLs are read with
    HTTP range requests (:mod:`ckptcount.targets.hub`); ``revision`` and ``token`` apply to those.
    """
    import os

    if not os.path.exists(target):
        from .targets.hub_target import is_hub_target  # a local target never imports the Hub modules

        if is_hub_target(target):
            from .targets.hub import load_hub

            try:
                return load_hub(target, revision=revision, token=token)
            except CkptError as e:
                # `runs/ckpt-7` with `runs/` here is a mistyped local path far more often than a Hub repo
                parent = os.path.dirname(target.rstrip("/"))
                if parent and os.path.isdir(parent) and "://" not in target:
                    raise TargetNotFound(target, f"no such file or directory (nor a Hub repo: {e.what})") from None
                raise
    return load_local(target)


def _listing(checkpoint: Checkpoint) -> dict[str, int | None] | None:
    """Every file next to the counted ones, with sizes: the Hub listing, or the local directory."""
    import os

    if checkpoint.origin.get("listing") is not None:
        return dict(checkpoint.origin["listing"])
    folder = checkpoint.target if os.path.isdir(checkpoint.target) else None
    if folder is None:
        return None
    return {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}


def audit(
    target: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    dtype: str | None = None,
    max_size: int | None = None,
    fits: int | None = None,
    context: int | None = None,
    batch: int = 1,
    kv_dtype: str | None = None,
    variant: str | None = None,
    base: str | None = None,
    file: str | None = None,
) -> Report:
    """Count and classify the parameters of ``target`` from its headers alone. Raises :class:`CkptError`.

    Hub targets, and any target when ``dtype``/``max_size``/``fits`` is given, also get a preflight (download bytes,
    memory at the stored dtype and at ``dtype``, and the checks; see :mod:`ckptcount.analysis.preflight`). ``context``
    (tokens per sequence, ``batch`` sequences) adds the KV cache at ``kv_dtype`` (:mod:`ckptcount.analysis.kvcache`), which
    ``fits`` then includes.

    A target that holds several models (a diffusers pipeline, a sentence-transformers model with its modules, a set
    of GGUF files) or a PEFT adapter is read part by part (:mod:`ckptcount.targets.repo`): the report's ``layout``
    holds each component's report. ``variant`` picks a pipeline's weight variant (``fp16``); ``base`` names an
    adapter's base model (a path or a Hub repo) to measure the adapter against; ``file`` counts one file of the
    target (one GGUF of a set).
    """
    if file is not None:
        target = with_file(target, file)
    with gc_paused():  # hundreds of thousands of acyclic records: see ckptcount.support.gcpause
        report, listing = _read(target, revision, token, variant, base)
    report = _unused(report, variant, base)
    checkpoint = report.checkpoint
    if checkpoint.origin or dtype or max_size is not None or fits is not None or context is not None:
        from .analysis.preflight import preflight

        pf = preflight(
            checkpoint,
            listing if listing is not None else _listing(checkpoint),
            dtype=dtype,
            max_size=max_size,
            fits=fits,
            counts=report.counts,
            listing_complete=checkpoint.origin.get("listed", True) is not False,
            context=context,
            batch=batch,
            kv_dtype=kv_dtype,
        )
        report = dataclasses.replace(report, preflight=pf)
    return report


def _read(target: str, revision, token, variant, base) -> tuple[Report, dict | None]:
    """(the report, the listing of a target read part by part): one model, or the parts of a layout."""
    import os

    from .targets import repo

    if os.path.exists(target):
        planned = repo.local_plan(target, variant)
        if planned is None:
            return analyse(load(target)), None
        return parts(target, planned, lambda part: load(repo.local_part(target, part)), base, token), dict(planned.listing)
    from .errors import NothingToCount

    checkpoint, spent = None, (0, 0)  # spent: the requests and bytes of a first read that is not one of the parts
    try:
        checkpoint = load(target, revision=revision, token=token)
    except NothingToCount as nothing:  # no one checkpoint here: a pipeline, a set of GGUF files?
        found = _hub_plan(target, revision, token, variant, nothing.seen)
        if found is None:
            raise nothing from None
        spent = nothing.spent
    else:
        if not repo.wanted(checkpoint.origin.get("listing") or ()):
            return analyse(checkpoint), None
        origin = checkpoint.origin
        seen = (origin["sha"], origin["repo_files"]) if origin.get("repo_files") is not None else None
        try:
            found = _hub_plan(target, revision, token, variant, seen)
        except CkptError:  # offline, or the listing refused: the one model read, as before
            found = None
        if found is None:
            return analyse(checkpoint), None
    planned, pinned, origin = found
    from .targets.hub_parts import load_part

    def first_read_is(part) -> bool:  # the root module (sentence-transformers) or the adapter: already read
        return checkpoint is not None and (not part.path or [f.path for f in checkpoint.files] == [part.path])

    if checkpoint is not None and not any(map(first_read_is, planned.parts)):  # read, not a part: its requests still count
        spent = (checkpoint.origin.get("requests", 0), checkpoint.origin.get("bytes_received", 0))
    origin = _plus(origin, [spent])

    def read(part):
        if first_read_is(part):
            return checkpoint
        return load_part(pinned, part, token, planned.listing)

    return parts(target, planned, read, base, token, origin), dict(planned.listing)


def _plus(origin, spent: list[tuple[int, int]]) -> dict:
    """A Hub origin with the (requests, bytes received) of other reads of the same audit added to its own."""
    return {
        **origin,
        "requests": origin.get("requests", 0) + sum(r for r, _ in spent),
        "bytes_received": origin.get("bytes_received", 0) + sum(b for _, b in spent),
    }


def _unused(report: Report, variant: str | None, base: str | None) -> Report:
    """``--variant`` given for what is not a diffusers pipeline, or ``--base`` for what is not an adapter: a finding
    saying it was not used (exit 4 under ``--strict``), never silence."""
    from .records import Finding

    kind = report.layout.kind if report.layout is not None else None
    said = []
    if variant is not None and kind != "diffusers-pipeline":
        said.append(Finding("option-unused", f"--variant {variant}: applies to a diffusers pipeline (model_index.json), which this is not; not used"))
    if base is not None and kind != "peft-adapter":
        said.append(Finding("option-unused", f"--base {base}: applies to a PEFT adapter (adapter_config.json), which this is not; not used"))
    if not said:
        return report
    ck = report.checkpoint
    return dataclasses.replace(report, checkpoint=dataclasses.replace(ck, findings=ck.findings + tuple(said)))


def _hub_plan(target, revision, token, variant, seen=None):
    from .targets.hub_parts import hub_plan

    try:
        return hub_plan(target, revision, token, variant, seen)
    except TargetNotFound:
        return None


def parts(target: str, planned, read, base: str | None, token: str | None, origin=None) -> Report:
    """The report of a planned target: each part read (``read(part)`` -> Checkpoint) and analysed, then combined;
    an adapter is one part, measured against its base."""
    from concurrent.futures import ThreadPoolExecutor

    from .analysis.combine import combine
    from .records import Component, RepoLayout

    if planned.kind == "peft-adapter":
        adapter = dataclasses.replace(read(planned.parts[0]), target=target)
        return _adapter(adapter, planned.settings, base, token, origin, planned.findings)
    with ThreadPoolExecutor(max_workers=4 if origin else 1) as pool:  # Hub parts wait on the network: together
        reports = list(pool.map(lambda part: analyse(read(part)), planned.parts))
    comps = tuple(Component(p.name, p.path, p.role, p.library, p.class_name, r) for p, r in zip(planned.parts, reports))
    layout = RepoLayout(
        planned.kind, planned.index_file, comps, planned.not_counted, planned.variants, planned.variant,
        planned.alternatives, pipeline_class=planned.pipeline_class,
    )
    if origin:
        origin = {**origin, "requests": origin["requests"] + sum(r.checkpoint.origin.get("requests", 0) for r in reports),
                  "bytes_received": origin["bytes_received"] + sum(r.checkpoint.origin.get("bytes_received", 0) for r in reports)}
    return combine(target, layout, planned.findings, origin)


def _adapter(checkpoint: Checkpoint, settings, base: str | None, token: str | None, plan_origin=None, noted=()) -> Report:
    """A PEFT adapter's report: its own counts, its settings, and with its base (``base``, or for a Hub adapter the
    Hub repo its config names) the share of the base and the check of every adapted module against it. A Hub
    adapter's ``requests`` and ``bytes_received`` are the whole audit's: the adapter, its plan and its base."""
    from .analysis import adapter
    from .records import RepoLayout
    from .targets.hub_target import REPO_ID

    report = analyse(checkpoint)
    named = settings.get("base_model_name_or_path")
    base_target, base_report, unread, base_spent = base, None, None, (0, 0)
    if base_target is None and checkpoint.origin and isinstance(named, str) and REPO_ID.match(named):
        base_target = named  # a Hub adapter: its base on the same Hub, by headers
    if base_target is not None:
        try:
            base_report = analyse(load(base_target, token=token))
        except CkptError as e:
            if base is not None:
                raise  # asked for by name: its error is the answer
            unread, base_spent = str(e), e.spent
    else:
        unread = "a local adapter's base is read only when named: give --base PATH or a Hub repo"
    info, findings = adapter.summarize(settings, report, base_report, base_target)
    if base_report is None:
        info["base"] = {"target": base_target or named, "read": False, "why": unread}
    ck = dataclasses.replace(report.checkpoint, findings=report.checkpoint.findings + tuple(noted) + tuple(findings))
    if ck.origin:
        from types import MappingProxyType

        spent = [(o.get("requests", 0), o.get("bytes_received", 0)) for o in (plan_origin, base_report.checkpoint.origin if base_report else None) if o]
        ck = dataclasses.replace(ck, origin=MappingProxyType(_plus(ck.origin, spent + [base_spent])))
    layout = RepoLayout("peft-adapter", "adapter_config.json", adapter=info)
    return dataclasses.replace(report, checkpoint=ck, layout=layout)


def with_file(target: str, file: str) -> str:
    """``target`` narrowed to one of its files (``--file``): a plain relative name, inside the target."""
    import os

    from .errors import UnsafePath

    if not file or os.path.isabs(file) or "\\" in file or any(p in ("", ".", "..") for p in file.split("/")):
        raise UnsafePath(file, "--file takes a plain relative path inside the target")
    if os.path.exists(target):
        return os.path.join(target, file)
    if target.startswith("hf://"):
        return f"{target.rstrip('/')}/{file}"
    if "://" in target:
        raise TargetNotFound(target, "--file: name the file in the URL (…/resolve/<revision>/<file>) or use hf://org/name")
    return f"hf://{target.rstrip('/')}/{file}"


def audit_many(targets: list[str], *, jobs: int | None = None, **options) -> list[Report | CkptError]:
    """Audit each target (concurrently: Hub targets spend their time waiting); one failing target is returned as its
    error while the others are still reported. ``options`` are :func:`audit`'s keywords; ``jobs`` caps the
    concurrent audits (default 8)."""

    def one(target: str) -> Report | CkptError:
        try:
            return audit(target, **options)
        except CkptError as e:
            return e

    if len(targets) <= 1 or jobs == 1:
        return [one(t) for t in targets]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(jobs or 8, len(targets))) as pool:
        return list(pool.map(one, targets))


def audit_iter(targets, *, jobs: int = 8, **options):
    """Yield ``(position, target, Report | CkptError)`` as each audit finishes (batch audits: ``--format jsonl``).

    ``targets`` may be any iterable (a file read line by line); at most ``jobs`` audits run at once and at most
    ``2 * jobs`` targets are taken ahead, so memory stays flat however long the list. A target that fails is yielded
    as its error; the others go on. Anything that is not a :class:`CkptError` (a bug) is not swallowed.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def one(target: str) -> Report | CkptError:
        try:
            return audit(target, **options)
        except CkptError as e:
            return e

    jobs = max(1, jobs)
    it = iter(enumerate(targets))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        for position, target in it:
            running[pool.submit(one, target)] = (position, target)
            if len(running) >= 2 * jobs:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f][0]):
                position, target = running.pop(future)
                yield position, target, future.result()
                for nxt in it:
                    running[pool.submit(one, nxt[1])] = nxt
                    break


def diff_targets(
    a: str,
    b: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    ignore: tuple[str, ...] | frozenset[str] = (),
    content: bool = False,
    budget: int | None = None,
):
    """What changed from ``a`` to ``b`` (:class:`ckptcount.diff.compare.Diff`), from their headers alone; with ``content``,
    also the bytes of the tensors both hold with the same shape, at most ``budget`` bytes read
    (:mod:`ckptcount.diff.content`). ``ignore``: "dtype", "buffers". Raises the first target's :class:`CkptError`."""
    from .diff.compare import compare

    ra, rb = audit_many([a, b], revision=revision, token=token)
    for t, r in ((a, ra), (b, rb)):
        if isinstance(r, CkptError):
            raise r
        if r.layout is not None and r.layout.alternatives:  # several models, never summed: nothing one to compare
            names = ", ".join(c.name for c in r.layout.components[:4])
            raise TargetNotFound(t, f"holds {len(r.layout.components)} GGUF files ({names}): name one to compare ({t.rstrip('/')}/{r.layout.components[0].name})")
    d = compare(ra, rb, ignore=frozenset(ignore))
    if content:
        from .diff.content import DEFAULT_BUDGET, compare_content

        d = compare_content(ra, rb, d, budget=DEFAULT_BUDGET if budget is None else budget, token=token)
    return d
