"""The inert values the pickle machine builds (nothing in them was imported, called or instantiated), the result it
returns, and :func:`_q`, which quotes any of them (or a zip entry name) in a message."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class StorageRef:
    """A persistent id ``('storage', type, key, location, numel)``: numel in elements (typed) or bytes (untyped)."""

    key: str
    dtype: str | None  # None for an UntypedStorage (its tensors carry the dtype)
    numel: int
    location: str


@dataclass(eq=False)
class TensorRef:
    storage: StorageRef
    offset: int  # in elements of dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    parameter: bool = False


@dataclass(eq=False)
class Opaque:
    """The inert result of something the machine refused to call: ``what`` names it. ``state``: what a ``BUILD``
    would have applied to it (never applied; the walker reads an ``nn.Module``'s tensors from it)."""

    what: str
    state: object = None


class PDict:
    """A pickled dict: pairs in order (keys may be unhashable; duplicates kept as the pickle wrote them)."""

    __slots__ = ("pairs",)

    def __init__(self) -> None:
        self.pairs: list = []


class PList(list):
    pass


class PTuple(tuple):
    pass


@dataclass
class PickleResult:
    root: object
    unsafe: dict[str, str] = field(default_factory=dict)  # "module.name" -> "calls" | "references"
    unsupported: list[str] = field(default_factory=list)


def _q(text: object, limit: int = 80) -> str:
    r = repr(text) if isinstance(text, str) else repr(str(text))
    return r if len(r) <= limit else r[: limit - 4] + "...'"
