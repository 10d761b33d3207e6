"""Verify ties by content: read only the token embedding and output head (and other tied pairs), compare them, and
say what the numbers mean for the report.

Everything before this package reads headers only. Here, on request (``--verify-ties``), the byte spans of the tensors
involved are located (:mod:`.spans`: safetensors, PyTorch zip and legacy, GGUF, each at the offsets its reader
recorded), read in row blocks and reduced to float64 moments (:mod:`.compare`, on a backend of :mod:`.backends`), so
host memory stays within one budget (``block_bytes``) whatever the vocabulary size. For each pair: Pearson r and the
largest absolute difference in the head's orientation, whether the stored bytes are identical, and mean, std, min and
max of each tensor.

A head that is not stored but tied by the config is one matrix: the tie is structural (r = 1 by construction) and only
the stored tensor's statistics are computed. The audit findings (:func:`_judge`): a tie the content contradicts, an
untied exact copy, a near-copy. torch and numpy are imported inside functions only: the counting path never imports
them.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from ..analysis.classify import component_of
from ..analysis.combine import said_by
from ..analysis.config import tie_setting
from ..errors import CkptError
from ..records import BUFFER, OUTPUT_HEAD, TOKEN_EMBEDDING, ContentCheck, Finding, Report, TieGroup, Verification
from ..sources.files import LocalFile
from .backends import VerifyError, _Numpy, _Torch, resolve
from .compare import DEFAULT_BLOCK_BYTES, Progress, compare
from .spans import Located, Opener, locate_tensor, opener

__all__ = ["VerifyError", "check_dict", "resolve", "verify_report", "verify_results", "StderrProgress"]

NEAR_COPY_R = 0.99
HEAD_WEIGHTS = ("lm_head.weight", "embed_out.weight", "output.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight")


def _pick(report: Report) -> tuple[str | None, str | None]:
    """(token embedding, output head): the stored ones first, else the names the tie group holding the other gives."""
    stored = {c.tensor.name: c for c in report.classified if c.kind != BUFFER}
    embeddings = [c for c in stored.values() if c.component == TOKEN_EMBEDDING and len(c.tensor.shape) == 2]
    emb = min(embeddings, key=lambda c: (c.tensor.name.count("."), c.tensor.name), default=None)
    e = emb.tensor.name if emb else None
    heads = [n for n in HEAD_WEIGHTS if n in stored and stored[n].component == OUTPUT_HEAD and len(stored[n].tensor.shape) == 2]
    if not heads and emb is not None:  # any other 2-D head weight that lines up with the embedding, either way round
        shapes = (emb.tensor.shape, emb.tensor.shape[::-1])
        heads = sorted(n for n, c in stored.items() if c.component == OUTPUT_HEAD and n.endswith("weight") and c.tensor.shape in shapes)
    h = heads[0] if heads else None
    if e is None or h is None:
        for g in report.ties:
            if (e is not None and e not in g.names) or (h is not None and h not in g.names):
                continue
            e = e or next((n for n in g.names if component_of(n) == TOKEN_EMBEDDING), None)
            h = h or next((n for n in g.names if component_of(n) == OUTPUT_HEAD and n.endswith("weight")), None)
            if e is not None and h is not None:
                break
    return e, h


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def verify_report(
    report: Report,
    *,
    device: str = "auto",
    backend: str | None = None,
    engine: _Numpy | _Torch | None = None,
    open_source: Opener | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int | None = None,
    progress: Progress | None = None,
    token: str | None = None,
) -> Report:
    """A new Report with ``verification`` set and the audit findings appended to its checkpoint's findings.

    A target of several models (a pipeline, sentence-transformers modules, a set of GGUF files) is verified component
    by component, each against its own files: each has its own embedding, head and ties. The total's ``verification``
    stays None; each component's findings are added to the total's, named after the component."""
    engine = engine or resolve(device, backend)
    if report.layout is not None and report.layout.components:
        return _each_component(report, engine=engine, block_bytes=block_bytes, workers=workers, progress=progress, token=token)
    ck = report.checkpoint
    if open_source is None:
        open_source = opener(ck, token)
    check = _Checks(ck, engine, open_source, block_bytes=block_bytes, workers=workers, progress=progress)
    tensors, findings = check.tensors, check.findings

    tied, how = tie_setting(ck.config)
    e, h = _pick(report)
    group_of = {n: g for g in report.ties for n in g.names}
    evh = None
    stored = tuple(n for n in (e, h) if n is not None and n in tensors)
    if e is not None and h is not None:
        g = group_of.get(e) if group_of.get(e) is group_of.get(h) else None
        if len(stored) == 2:
            evh = check(e, h)
            if not evh.skipped:
                is_tied = (g is not None and g.counted_once) or tied is True
                if is_tied:
                    why = how if tied is True else g.evidence.split("; ")[0]
                else:
                    why = how if tied is False else "no config.json ties them"
                findings.extend(_judge(e, h, evh, is_tied, why, tensors[h].nbytes))
        elif g is not None and g.stored:  # one matrix under two names: structural
            evh = check(g.stored[0], None)

    tie_checks: dict[tuple[str, ...], ContentCheck] = {}
    for g in report.ties:
        if len(g.stored) >= 2:
            pairs = [check(g.stored[0], s) for s in g.stored[1:]]
            tie_checks[g.names] = _merge_pairs(g, pairs)
            if not ({e, h} <= set(g.stored)):
                for s, c in zip(g.stored[1:], pairs):
                    if not c.skipped:
                        findings.extend(_judge(g.stored[0], s, c, g.counted_once, g.evidence, tensors[s].nbytes))
        elif len(g.stored) == 1:
            if evh is not None and evh.orientation == "structural" and g.stored[0] in evh.names:
                tie_checks[g.names] = evh
            else:
                tie_checks[g.names] = ContentCheck(names=g.stored, orientation="structural", pearson_r=1.0, max_abs_diff=0.0, identical=True)

    verification = Verification(
        embedding=e, head=h, stored=stored, embedding_vs_head=evh, ties=MappingProxyType(tie_checks)
    )
    new_ck = replace(ck, findings=ck.findings + tuple(findings))
    return replace(report, checkpoint=new_ck, verification=verification)


def _each_component(report: Report, **kwargs) -> Report:
    lay, comps, added = report.layout, [], []
    for c in lay.components:
        before = len(c.report.checkpoint.findings)
        verified = verify_report(c.report, **kwargs)
        comps.append(replace(c, report=verified))
        added += [said_by(c, f) for f in verified.checkpoint.findings[before:]]
    ck = replace(report.checkpoint, findings=report.checkpoint.findings + tuple(added))
    return replace(report, checkpoint=ck, layout=replace(lay, components=tuple(comps)))


class _Checks:
    """The content checks of one checkpoint, each pair read once (cached); a skipped one adds a not-verified finding."""

    def __init__(self, ck, engine, open_source: Opener, *, block_bytes: int, workers: int | None, progress: Progress | None) -> None:
        self.engine, self.open_source = engine, open_source
        self.block_bytes, self.workers, self.progress = block_bytes, workers, progress
        self.files = {f.path: f for f in ck.files}
        self.tensors = {t.name: t for t in ck.tensors}
        self.findings: list[Finding] = []
        self.cache: dict[tuple[str, ...], ContentCheck] = {}

    def __call__(self, a: str, b: str | None) -> ContentCheck:
        key = (a,) if b is None else (a, b)
        if key not in self.cache:
            self.cache[key] = c = self._check(key, a, b)
            if c.skipped:
                self.findings.append(Finding("not-verified", f"{' vs '.join(key)}: {c.skipped}"))
        return self.cache[key]

    def _locate(self, name: str) -> Located | str:
        t = self.tensors[name]
        return locate_tensor(self.files[t.file], t, self.open_source)

    def _check(self, names: tuple[str, ...], a: str, b: str | None) -> ContentCheck:
        engine = self.engine
        ta, tb = self.tensors[a], self.tensors.get(b) if b is not None else None
        if tb is not None and ta.storage is not None and ta.file == tb.file and (ta.storage, ta.begin, ta.end, ta.dtype, ta.shape) == (tb.storage, tb.begin, tb.end, tb.dtype, tb.shape):
            # torch.save of tied weights: both names view the same bytes of one storage; nothing to read
            return ContentCheck(
                names=names, orientation="shared-storage", pearson_r=1.0, max_abs_diff=0.0, identical=True,
                elements=ta.numel, device=engine.device, backend=engine.name,
            )
        try:
            la = self._locate(a)
            lb = self._locate(b) if b is not None else None
            reason = la if isinstance(la, str) else lb if isinstance(lb, str) else None
            if reason is not None:
                return ContentCheck(names=names, orientation="none", skipped=reason, device=engine.device, backend=engine.name)
            n = self.workers if self.workers is not None else (None if isinstance(la.source, LocalFile) else 4)
            return compare(la, lb, engine=engine, block_bytes=self.block_bytes, workers=n, progress=self.progress)
        except CkptError as err:
            return ContentCheck(names=names, orientation="none", skipped=str(err), device=engine.device, backend=engine.name)


def _merge_pairs(g: TieGroup, pairs: list[ContentCheck]) -> ContentCheck:
    if len(pairs) == 1:
        return pairs[0]
    done = [c for c in pairs if not c.skipped]
    rs = [c.pearson_r for c in done]
    diffs = [c.max_abs_diff for c in done]
    return ContentCheck(
        names=g.stored,
        orientation=",".join(sorted({c.orientation for c in pairs})),
        pearson_r=min(rs) if rs and None not in rs else None,
        max_abs_diff=max(diffs) if diffs and None not in diffs else None,
        identical=all(c.identical for c in done) if len(done) == len(pairs) else None,
        bytes_read=sum(c.bytes_read for c in pairs),
        device=pairs[0].device,
        backend=pairs[0].backend,
        elements=sum(c.elements for c in pairs),
        stats=MappingProxyType({k: v for c in pairs for k, v in c.stats.items()}),
        skipped="; ".join(c.skipped for c in pairs if c.skipped) or None,
    )


def _judge(a: str, b: str, c: ContentCheck, tied: bool, why: str, nbytes: int) -> list[Finding]:
    """The audit: a tie the content contradicts, an untied exact copy, or a near-copy."""
    r, d = c.pearson_r, c.max_abs_diff
    stats = f"r={_fmt(r, '.9f')}, max |diff| {_fmt(d, '.3g')}"
    equal = c.identical or d == 0.0
    if tied and not equal:
        near = "a near-copy, " if r is not None and r >= NEAR_COPY_R else ""
        return [Finding("tied-but-different", f"{why}, but the stored {b} differs from {a} ({near}{stats}): a loader that ties them silently discards {b}")]
    if not tied and c.identical:
        return [Finding("untied-but-identical", f"{b} is a byte-identical copy of {a} ({nbytes:,} bytes) but {why}: tying them would save those bytes")]
    if not tied and r is not None and r >= NEAR_COPY_R and not equal:
        return [Finding("near-copy", f"{b} is a near-copy of {a} ({stats}) but not identical; {why}")]
    return []


def verify_results(results: list, **kwargs) -> list:
    """verify_report on every Report of an audit_many list; errors pass through unchanged."""
    engine = kwargs.pop("engine", None) or resolve(kwargs.pop("device", "auto"), kwargs.pop("backend", None))
    return [r if isinstance(r, CkptError) else verify_report(r, engine=engine, **kwargs) for r in results]


def check_dict(c: ContentCheck) -> dict:
    """The JSON form of one content check."""
    d: dict = {
        "pearson_r": c.pearson_r,
        "max_abs_diff": c.max_abs_diff,
        "identical": c.identical,
        "bytes_read": c.bytes_read,
        "device": c.device,
        "backend": c.backend,
        "orientation": c.orientation,
        "elements": c.elements,
    }
    if c.orientation == "structural":
        d["structural"] = True
    if c.stats:
        d["stats"] = {name: dict(s) for name, s in c.stats.items()}
    if c.skipped:
        d["skipped"] = c.skipped
    return d


class StderrProgress:
    """A rich progress bar of bytes read, on stderr (never stdout); shown only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TransferSpeedColumn

        self._console = Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=self._console, transient=True,
        )
        self._task = None

    def start(self, total: int, label: str) -> None:
        from rich.markup import escape

        self._bar.start()
        self._task = self._bar.add_task(escape(label[:60]), total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._bar.stop()