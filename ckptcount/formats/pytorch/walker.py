"""From the machine's object graph to tensors: every tensor under its full path (:func:`walk`), checked against its
storage (:func:`check_storages`), names that view one storage grouped (:func:`storage_ties`), the pickle's unsafe
names as findings (:func:`unsafe_findings`), and :class:`TorchRead`, what a torch file read gives (zip or legacy).

Iterative throughout: no recursion on hostile nesting."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import TorchFileError
from ...records import Finding, TensorRecord, TieGroup
from .values import Opaque, PDict, PickleResult, StorageRef, TensorRef, _q
from .vocabulary import DANGEROUS_MODULES, ITEMSIZE

MAX_NAME_CHARS = 4096  # a tensor path longer than this is cut and reported

SHARED = "shared storage"


@dataclass(frozen=True)
class Walked:
    tensors: tuple[tuple[str, TensorRef], ...]
    findings: tuple[Finding, ...]


def _key(k: object) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, (int, float)) and not isinstance(k, bool):
        return str(k)
    if isinstance(k, tuple):
        return "(" + ",".join(_key(x) for x in k) + ")"
    return f"<{type(k).__name__}>"


MAX_RELISTED = 100_000  # members of modules listed again under another name (a DAG of modules doubles per level)


def walk(root: object, where: str) -> Walked:
    """Every tensor under its full path (``state_dict.model.x.weight``, ``optimizer.state.0.exp_avg``).

    A bare state dict's tensors keep their own names. A whole pickled ``nn.Module`` (``torch.save(model)``, an object
    the machine did not build) is read from the ``__dict__`` its ``BUILD`` carried, under the names its
    ``state_dict()`` would give (:func:`module_members`): a submodule set under two names is listed under both, as
    ``state_dict()`` lists it (up to :data:`MAX_RELISTED` members in all), its tensors then one storage. Iterative;
    any other container is walked once (a container reached twice, or a cycle, is reported instead of being listed
    again).
    """
    out: list[tuple[str, TensorRef]] = []
    findings: list[Finding] = []
    seen: set[int] = set()  # ids only: holding every path of a 200k-deep nest would cost gigabytes
    trail: list[int] = []  # the ids of the containers on the current path, by depth (each at most once: cycles are cut)
    on_trail: set[int] = set()
    relisted = 0
    cut = False
    todo: list[tuple[str, object, int]] = [("", root, 0)]
    while todo:
        path, obj, depth = todo.pop()
        if isinstance(obj, TensorRef):
            out.append((path or "<root>", obj))
            continue
        if isinstance(obj, Opaque):
            members = module_members(obj)
            if members is None:
                continue
        elif not isinstance(obj, (PDict, list, tuple)):
            continue
        on_trail.difference_update(trail[depth:])  # back up to this object's parent
        del trail[depth:]
        if id(obj) in seen:
            again = isinstance(obj, Opaque) and id(obj) not in on_trail and relisted + len(members) <= MAX_RELISTED
            if not again:
                if obj_has_tensors(obj):
                    findings.append(Finding("repeated-object", f"{where}: {_q(path or '<root>')} is an object listed earlier under another path: its tensors listed once"))
                continue
            relisted += len(members)
        seen.add(id(obj))
        trail.append(id(obj))
        on_trail.add(id(obj))
        items = members if isinstance(obj, Opaque) else obj.pairs if isinstance(obj, PDict) else enumerate(obj)
        children = []
        for k, v in items:
            name = f"{path}.{_key(k)}" if path else _key(k)
            if len(name) > MAX_NAME_CHARS:  # keep both ends: the container and the tensor's own name
                cut = True
                name = name[: MAX_NAME_CHARS // 2] + "..." + name[-(MAX_NAME_CHARS // 2) :]
            children.append((name, v, depth + 1))
        todo.extend(reversed(children))
    if cut:
        findings.append(Finding("long-name", f"{where}: paths longer than {MAX_NAME_CHARS} characters were shortened in the middle"))
    return Walked(tuple(out), tuple(findings))


_MODULE_KEYS = ("_parameters", "_buffers", "_modules")


def module_members(obj: Opaque) -> list[tuple[str, object]] | None:
    """The (name, value) pairs that ``state_dict()`` walks in a pickled ``nn.Module``: its parameters, its persistent
    buffers, then its submodules, from the ``__dict__`` its ``BUILD`` carried; None for any other object.

    Only data is read: a module is recognised by the three dicts every ``nn.Module`` has, and nothing of its class is
    imported or run. Entries set to None (an absent bias) are skipped, as ``state_dict()`` skips them."""
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slot state)
        state = state[0]
    if not isinstance(state, PDict):
        return None
    attrs = {k: v for k, v in state.pairs if isinstance(k, str)}
    if not all(isinstance(attrs.get(k), PDict) for k in _MODULE_KEYS):
        return None
    skip = attrs.get("_non_persistent_buffers_set")
    skip = {x for x in skip if isinstance(x, str)} if isinstance(skip, list) else set()
    members = [(k, v) for k, v in attrs["_parameters"].pairs if v is not None]
    members += [(k, v) for k, v in attrs["_buffers"].pairs if v is not None and k not in skip]
    members += [(k, v) for k, v in attrs["_modules"].pairs if v is not None]
    return members


def obj_has_tensors(obj: object, budget: int = 10_000) -> bool:
    todo, seen = [obj], set()
    while todo and budget > 0:
        x = todo.pop()
        budget -= 1
        if isinstance(x, TensorRef):
            return True
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, PDict):
            todo.extend(v for _, v in x.pairs)
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, Opaque):
            todo.extend(v for _, v in module_members(x) or ())
    return False


def _extent(t: TensorRef) -> int:
    if any(d == 0 for d in t.shape):
        return 0
    return 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride))


def storage_ties(tensors: tuple[tuple[str, TensorRef], ...], where: str) -> tuple[tuple[TieGroup, ...], tuple[Finding, ...]]:
    """Group names by storage key. Identical views are one tensor ("shared storage", counted once); a group where one
    member covers the others' elements keeps that member first and counts it once (the views are named in a finding);
    disjoint or partially overlapping views of one allocation are different tensors (counted separately)."""
    by_key: dict[str, list[tuple[str, TensorRef]]] = {}
    for name, t in tensors:
        by_key.setdefault(t.storage.key, []).append((name, t))
    groups, findings = [], []
    for key, members in by_key.items():
        names = list(dict.fromkeys(n for n, _ in members))
        if len(names) < 2:
            continue
        spans = {n: (t.offset, t.offset + _extent(t), t.shape, t.stride) for n, t in members}
        if len({v for v in spans.values()}) == 1:
            groups.append(TieGroup(tuple(names), SHARED, tuple(names), True))
            continue
        cover = max(names, key=lambda n: (spans[n][1] - spans[n][0], -names.index(n)))
        lo, hi = spans[cover][:2]
        views = [n for n in names if n != cover and spans[n][:4] != spans[cover]]
        if all(lo <= spans[n][0] and spans[n][1] <= hi for n in names):
            desc = ", ".join(f"{_q(n, 60)} elements [{spans[n][0]}, {spans[n][1]})" for n in views[:3])
            more = f" and {len(views) - 3} more" if len(views) > 3 else ""
            groups.append(TieGroup(tuple([cover] + [n for n in names if n != cover]), f"{SHARED} (views inside {cover})", tuple([cover] + [n for n in names if n != cover]), True))
            findings.append(Finding("storage-view", f"{where}: storage {_q(key)}: {desc}{more} view part of {_q(cover, 60)} [{lo}, {hi}): counted once, as {_q(cover, 60)}"))
        else:
            ordered = sorted(names, key=lambda n: spans[n][0])
            overlap = any(spans[a][1] > spans[b][0] for a, b in zip(ordered, ordered[1:]))
            how = "overlapping" if overlap else "disjoint"
            groups.append(TieGroup(tuple(ordered), f"{SHARED} ({how} views: not one tensor, counted separately)", tuple(ordered), False))
            desc = ", ".join(f"{_q(n, 60)} [{spans[n][0]}, {spans[n][1]})" for n in ordered[:4])
            findings.append(Finding("storage-overlap" if overlap else "storage-split", f"{where}: storage {_q(key)} holds {how} views {desc}: each counted"))
    return tuple(groups), tuple(findings)


def unsafe_findings(result: PickleResult, where: str) -> list[Finding]:
    out = []
    for ref, how in sorted(result.unsafe.items()):
        module = ref.rsplit(".", 1)[0]
        danger = "can run code or touch the system" if module.split(".")[0] in DANGEROUS_MODULES or ref.startswith("copyreg") else "is not a tensor-rebuild function"
        out.append(Finding("unsafe-pickle", f"{where}: pickle {how} {ref}, which {danger}: not executed (torch.load(weights_only=True) would refuse it)"))
    for fn in sorted(set(result.unsupported)):
        out.append(Finding("unsupported-tensor", f"{where}: pickle rebuilds tensors with torch._utils.{fn}: not counted"))
    return out



@dataclass(frozen=True)
class TorchRead:
    tensors: tuple[TensorRecord, ...]
    ties: tuple[TieGroup, ...]
    findings: tuple[Finding, ...]
    pickle_bytes: int
    data_bytes: int  # bytes of the storages the tensors use, each once
    bytes_read: int
    reads: int
    storages: dict[str, tuple[str, int]] = field(default_factory=dict)  # FileRecord.storages
    strided: frozenset[str] = frozenset()  # FileRecord.strided


def _row_major(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a tensor's elements are one run of its storage in row-major order (dims of size 1 have any stride)."""
    want = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != want:
            return False
        want *= d
    return True


def strided(walked: Walked) -> frozenset[str]:
    """The names whose bytes are not one row-major run of their storage (``FileRecord.strided``)."""
    return frozenset(n for n, t in walked.tensors if not _row_major(t.shape, t.stride))


def check_storages(walked: Walked, sizes: dict[str, int] | None, where: str, name: str) -> tuple[list[TensorRecord], int, list[Finding]]:
    """Validate each tensor against its storage; records in walk order. ``sizes``: storage key -> bytes in the file."""
    declared: dict[str, StorageRef] = {}
    used: dict[str, int] = {}
    records = []
    findings: list[Finding] = []
    for path, t in walked.tensors:
        s = t.storage
        item = ITEMSIZE[t.dtype]
        first = declared.setdefault(s.key, s)
        if (first.dtype, first.numel) != (s.dtype, s.numel):
            raise TorchFileError(where, f"storage {_q(s.key)} is declared twice with different types or sizes ({first.dtype} x{first.numel}, {s.dtype} x{s.numel})")
        nbytes = s.numel * (ITEMSIZE[s.dtype] if s.dtype else 1)
        if sizes is not None:
            if s.key not in sizes:
                raise TorchFileError(where, f"tensor {_q(path)} uses storage {_q(s.key)}, which the zip does not hold")
            if sizes[s.key] != nbytes:
                raise TorchFileError(where, f"storage {_q(s.key)} should hold {nbytes} bytes but its zip entry holds {sizes[s.key]}")
        numel = 1
        for d in t.shape:
            numel *= d
        end = t.offset + _extent(t)
        if end * item > nbytes:
            raise TorchFileError(where, f"tensor {_q(path)} views elements up to {end} of storage {_q(s.key)}, which holds {nbytes // item}")
        used[s.key] = nbytes
        records.append(
            TensorRecord(path, t.dtype, t.shape, name, t.offset * item, t.offset * item + numel * item,
                         stored_bytes=numel * item if t.dtype == "C128" else None, storage=s.key)
        )
    if sizes is not None:
        unused = sorted(set(sizes) - set(declared))
        if unused:
            findings.append(Finding("unreferenced-storage", f"{name}: {len(unused)} storages in the zip are used by no listed tensor ({', '.join(_q(k, 20) for k in unused[:5])})"))
    return records, sum(used.values()), findings
