"""PyTorch zip checkpoints (``torch.save`` since 1.6: ``.bin``, ``.pt``, ``.pth``, ``.ckpt``) read without executing
anything, from a handful of small range reads.

A torch zip holds ``<top>/data.pkl`` (the pickled object, usually a state dict) and one uncompressed entry
``<top>/data/<key>`` per storage. ``data.pkl`` names every tensor with its storage key, dtype, shape, stride and
storage offset, so the tensors, and the names that view one storage (tied weights), are known from that file alone.

Hand-written on purpose, both halves:

* **Zip.** ``zipfile.ZipFile`` wants a seekable file object and reads the central directory through it; over HTTP that
  means a custom file wrapper whose read sizes we do not control, and it trusts ZIP64 sizes and counts as given. Here
  the reader asks a :class:`~ckptcount.formats.safetensors.ByteSource` for exact ranges: the tail (end-of-central-
  directory records, and for small files the whole directory), the central directory if the tail did not hold it, then
  the local header and bytes of ``data.pkl``: two or three reads. Every size, count and offset is checked against the
  file size and against caps before anything is allocated.
* **Pickle.** ``pickle.Unpickler`` imports modules and calls whatever ``GLOBAL``/``REDUCE`` name (that is how a
  malicious ``__reduce__`` runs ``os.system``); overriding ``find_class`` still runs the allowed callables, and torch's
  ``weights_only`` unpickler needs torch and builds real tensors. ``pickletools`` only disassembles: it does not build
  the object graph. :class:`PickleMachine` is a stack machine for the pickle opcodes that builds inert records: a
  ``GLOBAL`` becomes a :class:`Global` value, ``REDUCE`` of a tensor-rebuild function becomes a :class:`TensorRef`,
  ``REDUCE``/``NEWOBJ``/``INST``/``BUILD`` of anything else becomes an :class:`Opaque` value and an ``unsafe-pickle``
  finding naming the module and attribute. Nothing is imported, called or instantiated.

Memory is bounded by the caps on the central directory and ``data.pkl`` sizes: every opcode's length field is checked
against the bytes that remain, and the machine and the walker are iterative (no recursion on hostile nesting).
"""

from __future__ import annotations

import codecs
import struct
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType

from ...errors import TorchFileError
from ...records import FileRecord, Finding, TensorRecord, TieGroup

MAX_CENTRAL_DIRECTORY = 64 * 1024 * 1024  # ~800k entries; real torch files hold one entry per storage
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # data.pkl of a 10k-tensor state dict is ~2 MB
MAX_ENTRIES = 1_000_000
MAX_NAME_CHARS = 4096  # a tensor path longer than this is cut and reported
TAIL_READ = 8192  # first read from the end: EOCD (+ ZIP64 records) and, for small files, the central directory
LOCAL_EXTRA_GUESS = 128  # torch pads local headers to 64-byte alignment; read this much beyond the name at once

SHARED = "shared storage"

# Legacy typed storage classes -> dtype (torch/storage.py _dtype_to_storage_type_map, reversed)
STORAGE_DTYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
}
# torch dtype attribute -> dtype name (as records.DTYPE_BITS spells them; C128 is torch-only)
TORCH_DTYPES = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32", "float16": "F16", "half": "F16",
    "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32", "int16": "I16", "short": "I16",
    "int8": "I8", "uint8": "U8", "bool": "BOOL", "complex64": "C64", "cfloat": "C64", "complex128": "C128",
    "cdouble": "C128", "uint16": "U16", "uint32": "U32", "uint64": "U64", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3", "float8_e8m0fnu": "F8_E8M0", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "C64": 8,
    "C128": 16, "U16": 2, "U32": 4, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
}

# Globals a torch checkpoint may name. Everything else is an unsafe-pickle finding (never imported, never called).
TENSOR_REBUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}
PARAMETER_REBUILDERS = {"_rebuild_parameter", "_rebuild_parameter_with_state"}
# On torch's own weights_only allowlist, but they carry no (storage, shape) this reader can use: reported, not counted.
OTHER_TORCH_REBUILDERS = {
    "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
}
SAFE_GLOBALS = (
    {("torch._utils", n) for n in TENSOR_REBUILDERS | PARAMETER_REBUILDERS | OTHER_TORCH_REBUILDERS}
    | {("torch", n) for n in STORAGE_DTYPES}
    | {("torch", n) for n in TORCH_DTYPES}
    | {("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"), ("torch", "UntypedStorage")}
    | {
        ("collections", "OrderedDict"), ("collections", "Counter"), ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch.nn.parameter", "Parameter"), ("torch", "Tensor"), ("torch", "Size"), ("torch", "device"),
        ("_codecs", "encode"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
        ("builtins", "complex"), ("torch.serialization", "_get_layout"),
    }
)
PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}
# Modules whose attributes run code or touch the system: named as such in the finding.
DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "runpy", "importlib", "shutil", "socket",
    "pty", "webbrowser", "pickle", "_pickle", "marshal", "ctypes", "code", "codeop", "commands", "platform", "types",
    "operator", "functools", "pip", "torch.hub", "torch.jit", "numpy.testing", "asyncio", "multiprocessing",
}


# --------------------------------------------------------------------------------------------------------- records
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


class Truncated(Exception):
    """A prefix of the stream ran out (``PickleMachine(partial=True)``): ``args[0]`` is the length it needed."""


@dataclass
class PickleResult:
    root: object
    unsafe: dict[str, str] = field(default_factory=dict)  # "module.name" -> "calls" | "references"
    unsupported: list[str] = field(default_factory=list)


def _q(text: object, limit: int = 80) -> str:
    r = repr(text) if isinstance(text, str) else repr(str(text))
    return r if len(r) <= limit else r[: limit - 4] + "...'"


# ---------------------------------------------------------------------------------------------------- the machine
class PickleMachine:
    """Interpret a pickle stream (protocols 0-5) into inert values. Never imports, calls or instantiates anything.

    ``persistent_load`` decides what a persistent id means (zip and legacy files spell storages differently).
    """

    def __init__(self, data: bytes, where: str, persistent_load, start: int = 0, partial: bool = False):
        self.data = data
        self.partial = partial  # data is a prefix of the stream: running out raises Truncated (read more, retry)
        self.where = where
        self.pos = start
        self.persistent_load = persistent_load
        self.unsafe: dict[str, str] = {}
        self.unsupported: list[str] = []

    # -- byte access, every length checked against what remains
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            if self.partial and n >= 0:
                raise Truncated(self.pos + n)
            raise self._error(f"opcode wants {n} bytes but only {len(self.data) - self.pos} remain")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def _line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            if self.partial:
                raise Truncated(len(self.data) + 1)
            raise self._error("text opcode has no end of line")
        b = self.data[self.pos : end]
        self.pos = end + 1
        return b

    def _error(self, what: str) -> TorchFileError:
        return TorchFileError(self.where, f"pickle byte {self.pos}: {what}")

    def _flag(self, g: object, how: str) -> None:
        if isinstance(g, Global) and (g.module, g.name) not in SAFE_GLOBALS:
            key = str(g)
            if how == "calls" or key not in self.unsafe:
                self.unsafe[key] = how

    def _global(self, module: str, name: str) -> Global:
        module = PY2_MODULES.get(module, module)  # protocol 2 spells builtins as Python 2 did, as pickle maps them
        g = Global(module, name)
        if (module, name) not in SAFE_GLOBALS:
            self.unsafe.setdefault(str(g), "references")
        return g

    def end(self) -> int:
        return self.pos

    def run(self) -> PickleResult:
        stack: list = []
        metastack: list = []
        memo: dict = {}
        data = self.data

        def pop_mark() -> list:
            nonlocal stack
            if not metastack:
                raise self._error("MARK expected on the stack")
            items = stack
            stack = metastack.pop()
            return items

        def pop():
            if not stack:
                raise self._error("stack underflow")
            return stack.pop()

        def top():
            if not stack:
                raise self._error("stack underflow")
            return stack[-1]

        while True:
            if self.pos >= len(data):
                if self.partial:
                    raise Truncated(self.pos + 1)
                raise self._error("pickle ends without STOP (truncated)")
            op = data[self.pos]
            self.pos += 1
            if op == 0x80:  # PROTO
                proto = self._take(1)[0]
                if proto > 5:
                    raise self._error(f"unsupported pickle protocol {proto}")
            elif op == 0x95:  # FRAME
                self._take(8)
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or metastack:
                    raise self._error(f"STOP with {len(stack)} values on the stack")
                return PickleResult(stack[0], self.unsafe, self.unsupported)
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(top())
            # -- scalars
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:
                stack.append(True)
            elif op == 0x89:
                stack.append(False)
            elif op == 0x4A:  # BININT
                stack.append(struct.unpack("<i", self._take(4))[0])
            elif op == 0x4B:  # BININT1
                stack.append(self._take(1)[0])
            elif op == 0x4D:  # BININT2
                stack.append(struct.unpack("<H", self._take(2))[0])
            elif op == 0x8A:  # LONG1
                n = self._take(1)[0]
                stack.append(int.from_bytes(self._take(n), "little", signed=True))
            elif op == 0x8B:  # LONG4
                (n,) = struct.unpack("<i", self._take(4))
                stack.append(int.from_bytes(self._take(n), "little", signed=True))
            elif op in (0x49, 0x4C):  # INT, LONG (text)
                text = self._line().rstrip(b"L")
                if text == b"00":
                    stack.append(False)
                elif text == b"01":
                    stack.append(True)
                else:
                    try:
                        stack.append(int(text))
                    except ValueError:
                        raise self._error("malformed text integer") from None
            elif op == 0x47:  # BINFLOAT
                stack.append(struct.unpack(">d", self._take(8))[0])
            elif op == 0x46:  # FLOAT
                try:
                    stack.append(float(self._line()))
                except ValueError:
                    raise self._error("malformed text float") from None
            # -- strings and bytes
            elif op == 0x58:  # BINUNICODE
                (n,) = struct.unpack("<I", self._take(4))
                stack.append(self._text(self._take(n)))
            elif op == 0x8C:  # SHORT_BINUNICODE
                stack.append(self._text(self._take(self._take(1)[0])))
            elif op == 0x8D:  # BINUNICODE8
                (n,) = struct.unpack("<Q", self._take(8))
                stack.append(self._text(self._take(n)))
            elif op == 0x56:  # UNICODE (text)
                stack.append(self._line().decode("raw_unicode_escape", errors="replace"))
            elif op == 0x54:  # BINSTRING
                (n,) = struct.unpack("<i", self._take(4))
                stack.append(self._take(n).decode("latin-1"))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(self._take(self._take(1)[0]).decode("latin-1"))
            elif op == 0x53:  # STRING (text, quoted)
                raw = self._line()
                if len(raw) < 2 or raw[:1] != raw[-1:] or raw[:1] not in (b"'", b'"'):
                    raise self._error("malformed STRING")
                try:
                    stack.append(codecs.escape_decode(raw[1:-1])[0].decode("latin-1"))
                except ValueError:
                    raise self._error("malformed STRING escape") from None
            elif op == 0x43:  # SHORT_BINBYTES
                stack.append(self._take(self._take(1)[0]))
            elif op == 0x42:  # BINBYTES
                (n,) = struct.unpack("<I", self._take(4))
                stack.append(self._take(n))
            elif op == 0x8E:  # BINBYTES8
                (n,) = struct.unpack("<Q", self._take(8))
                stack.append(self._take(n))
            elif op == 0x96:  # BYTEARRAY8
                (n,) = struct.unpack("<Q", self._take(8))
                stack.append(bytearray(self._take(n)))
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise self._error("out-of-band pickle buffers are not part of a torch checkpoint")
            # -- containers
            elif op == 0x5D:  # EMPTY_LIST
                stack.append(PList())
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(PTuple())
            elif op == 0x7D:  # EMPTY_DICT
                stack.append(PDict())
            elif op == 0x8F:  # EMPTY_SET
                stack.append(PList())
            elif op == 0x6C:  # LIST
                items = pop_mark()
                stack.append(PList(items))
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                stack.append(PTuple(items))
            elif op == 0x85:
                stack.append(PTuple((pop(),)))
            elif op == 0x86:
                b, a = pop(), pop()
                stack.append(PTuple((a, b)))
            elif op == 0x87:
                c, b, a = pop(), pop(), pop()
                stack.append(PTuple((a, b, c)))
            elif op == 0x64:  # DICT
                items = pop_mark()
                d = PDict()
                d.pairs.extend(zip(items[0::2], items[1::2]))
                stack.append(d)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                stack.append(PList(items))
            elif op == 0x61:  # APPEND
                value = pop()
                self._extend(top(), [value])
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                self._extend(top(), items)
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                self._extend(top(), items)
            elif op == 0x73:  # SETITEM
                value, key = pop(), pop()
                self._setitems(top(), [key, value])
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                self._setitems(top(), items)
            # -- memo
            elif op == 0x71:  # BINPUT
                memo[self._take(1)[0]] = top()
            elif op == 0x72:  # LONG_BINPUT
                memo[struct.unpack("<I", self._take(4))[0]] = top()
            elif op == 0x70:  # PUT
                memo[self._memo_key(self._line())] = top()
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = top()
            elif op in (0x68, 0x6A, 0x67):  # BINGET, LONG_BINGET, GET
                if op == 0x68:
                    key = self._take(1)[0]
                elif op == 0x6A:
                    key = struct.unpack("<I", self._take(4))[0]
                else:
                    key = self._memo_key(self._line())
                if key not in memo:
                    raise self._error(f"memo key {key} was never stored")
                stack.append(memo[key])
            # -- globals and calls: recorded, never resolved
            elif op == 0x63:  # GLOBAL
                module = self._line().decode("utf-8", errors="replace")
                name = self._line().decode("utf-8", errors="replace")
                stack.append(self._global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name, module = pop(), pop()
                if not isinstance(module, str) or not isinstance(name, str):
                    raise self._error("STACK_GLOBAL needs two strings")
                stack.append(self._global(module, name))
            elif op == 0x52:  # REDUCE
                args, func = pop(), pop()
                stack.append(self._call(func, args))
            elif op == 0x81:  # NEWOBJ
                args, cls = pop(), pop()
                self._flag(cls, "calls")
                stack.append(Opaque(f"{cls}()"))
            elif op == 0x92:  # NEWOBJ_EX
                pop()  # the keyword arguments: never used, the call is not made
                args, cls = pop(), pop()
                self._flag(cls, "calls")
                stack.append(Opaque(f"{cls}()"))
            elif op == 0x69:  # INST
                module = self._line().decode("utf-8", errors="replace")
                name = self._line().decode("utf-8", errors="replace")
                pop_mark()
                g = self._global(module, name)
                self._flag(g, "calls")
                stack.append(Opaque(f"{g}()"))
            elif op == 0x6F:  # OBJ
                items = pop_mark()
                if not items:
                    raise self._error("OBJ without a class")
                self._flag(items[0], "calls")
                stack.append(Opaque(f"{items[0]}()"))
            elif op == 0x62:  # BUILD: __setstate__ / attribute update. Tensors, Parameters, dicts only.
                state = pop()  # nothing is applied; only what it is applied to is checked
                obj = top()
                if not isinstance(obj, (TensorRef, PDict, Opaque)):
                    raise self._error(f"BUILD on a {type(obj).__name__}")
                if isinstance(obj, Opaque) and obj.state is None:
                    obj.state = state  # kept as data: a pickled nn.Module's __dict__ holds its tensors (walk)
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4: the copyreg extension registry
                n = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                code = int.from_bytes(self._take(n), "little")
                self.unsafe[f"copyreg extension {code}"] = "references"
                stack.append(Opaque(f"extension {code}"))
            elif op == 0x51:  # BINPERSID
                stack.append(self.persistent_load(pop(), self))
            elif op == 0x50:  # PERSID (text)
                stack.append(self.persistent_load(self._line().decode("ascii", errors="replace"), self))
            else:
                raise self._error(f"unknown opcode 0x{op:02x}")

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="surrogateescape")

    def _memo_key(self, line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
            raise self._error("malformed memo key") from None

    def _extend(self, target: object, items: list) -> None:
        if isinstance(target, list):
            target.extend(items)
        elif not isinstance(target, Opaque):  # appending to an opaque object would call its append(): never
            raise self._error(f"APPEND to a {type(target).__name__}")

    def _setitems(self, target: object, items: list) -> None:
        if len(items) % 2:
            raise self._error("SETITEMS with an odd number of values")
        if isinstance(target, PDict):
            target.pairs.extend(zip(items[0::2], items[1::2]))
        elif not isinstance(target, Opaque):
            raise self._error(f"SETITEM on a {type(target).__name__}")

    # -- REDUCE: only the tensor-rebuild functions and plain containers are interpreted; nothing is ever called
    def _call(self, func: object, args: object):
        if not isinstance(func, Global):
            raise self._error(f"REDUCE on a {type(func).__name__}, not a global")
        if (func.module, func.name) not in SAFE_GLOBALS:
            self._flag(func, "calls")
            return Opaque(f"{func}()")
        if not isinstance(args, tuple):
            raise self._error(f"{func} called with {type(args).__name__} arguments, not a tuple")
        m, n = func.module, func.name
        if m == "torch._utils" and n in TENSOR_REBUILDERS:
            return self._tensor(n, args)
        if m == "torch._utils" and n in PARAMETER_REBUILDERS:
            if not args or not isinstance(args[0], TensorRef):
                raise self._error(f"{n} without a tensor")
            args[0].parameter = True
            return args[0]
        if (m, n) == ("torch._tensor", "_rebuild_from_type_v2"):
            if len(args) != 4 or not isinstance(args[2], tuple):
                raise self._error("_rebuild_from_type_v2 wants (func, type, args, state)")
            inner = self._call(args[0], args[2])
            if isinstance(inner, TensorRef) and isinstance(args[1], Global) and args[1].name == "Parameter":
                inner.parameter = True
            return inner
        if (m, n) == ("collections", "OrderedDict") or (m, n) == ("collections", "Counter"):
            d = PDict()
            if args and isinstance(args[0], list):
                for pair in args[0]:
                    if isinstance(pair, tuple) and len(pair) == 2:
                        d.pairs.append(pair)
            return d
        if (m, n) == ("torch", "Size"):
            return PTuple(args[0]) if args and isinstance(args[0], tuple) else PTuple()
        if (m, n) == ("_codecs", "encode"):
            if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
                try:
                    return args[0].encode(args[1])
                except UnicodeEncodeError:
                    raise self._error("_codecs.encode of text outside its encoding") from None
            return Opaque("_codecs.encode()")
        if m == "torch._utils" and n in OTHER_TORCH_REBUILDERS:
            self.unsupported.append(n)
            return Opaque(f"{n}()")
        if m == "builtins" and n in ("set", "frozenset"):
            return PList(args[0]) if args and isinstance(args[0], list) else PList()
        return Opaque(f"{func}()")  # torch.device, bytearray, complex, layouts: values with no tensors in them

    def _tensor(self, fn: str, args: tuple) -> TensorRef:
        if len(args) < 4:
            raise self._error(f"{fn} wants (storage, offset, size, stride, ...), got {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, StorageRef):
            raise self._error(f"{fn} first argument is not a storage persistent id")
        if not _is_index(offset):
            raise self._error(f"{fn} storage offset {_q(offset)} is not a non-negative integer")
        if not (isinstance(size, tuple) and all(_is_index(d) for d in size)):
            raise self._error(f"{fn} size is not a tuple of non-negative integers")
        if not (isinstance(stride, tuple) and len(stride) == len(size) and all(_is_index(d) for d in stride)):
            raise self._error(f"{fn} stride does not match its size")
        dtype = storage.dtype
        if fn == "_rebuild_tensor_v3":
            if len(args) < 7 or not isinstance(args[6], Global) or args[6].module != "torch" or args[6].name not in TORCH_DTYPES:
                raise self._error("_rebuild_tensor_v3 without a torch dtype")
            dtype = TORCH_DTYPES[args[6].name]
        if dtype is None:
            raise self._error(f"{fn} on an untyped storage gives no dtype")
        return TensorRef(storage, offset, tuple(size), tuple(stride), dtype)


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


def storage_from_pid(pid: object, m: PickleMachine) -> StorageRef:
    """``('storage', storage_type, key, location, numel)``: the zip format's persistent id."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise m._error(f"persistent id is not ('storage', type, key, location, numel): {_q(str(pid)[:60])}")
    _, stype, key, location, numel = pid
    return _storage(stype, key, location, numel, m)


def _storage(stype: object, key: object, location: object, numel: object, m: PickleMachine) -> StorageRef:
    if not isinstance(stype, Global) or stype.module not in ("torch", "torch.storage"):
        raise m._error(f"storage type {_q(str(stype))} is not a torch storage class")
    if stype.name in ("UntypedStorage", "TypedStorage"):
        dtype = None
    elif stype.name in STORAGE_DTYPES:
        dtype = STORAGE_DTYPES[stype.name]
    else:
        raise m._error(f"storage type {_q(str(stype))} is not a torch storage class")
    if not isinstance(key, str) or not key or len(key) > 256:
        raise m._error("storage key is not a short string")
    if not _is_index(numel):
        raise m._error(f"storage {_q(key)} size {_q(numel)} is not a non-negative integer")
    return StorageRef(key, dtype, numel, location if isinstance(location, str) else "?")


def unpickle(data: bytes, where: str, persistent_load=storage_from_pid, start: int = 0, partial: bool = False) -> tuple[PickleResult, int]:
    m = PickleMachine(data, where, persistent_load, start, partial)
    result = m.run()
    return result, m.end()


# ------------------------------------------------------------------------------------------------------ the walker
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


# --------------------------------------------------------------------------------------------------------- the zip
@dataclass(frozen=True)
class Entry:
    name: str
    method: int
    flags: int
    csize: int
    usize: int
    offset: int  # of the local header


class _Reader:
    """Range reads over a ByteSource, remembering the tail so ranges inside it cost nothing."""

    def __init__(self, source, where: str):
        self.source = source
        self.where = where
        size = source.size()
        if size is None:
            raise TorchFileError(where, "file size unknown: cannot find the zip central directory")
        self.size = size
        self.tail_at = 0
        self.tail = b""
        self.bytes_read = 0
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TorchFileError(self.where, f"zip points at bytes [{offset}, {offset + length}) outside the {self.size}-byte file")
        if offset >= self.tail_at and offset + length <= self.tail_at + len(self.tail):
            return self.tail[offset - self.tail_at : offset - self.tail_at + length]
        buf = self.source.read(offset, length)
        self.reads += 1
        self.bytes_read += len(buf)
        if len(buf) != length:
            raise TorchFileError(self.where, f"file ended after {len(buf)} of {length} bytes at offset {offset}")
        return buf

    def read_tail(self, length: int) -> bytes:
        length = min(length, self.size)
        buf = self.read(self.size - length, length)
        self.tail_at, self.tail = self.size - length, buf
        return buf


def _find_eocd(r: _Reader) -> tuple[int, bytes]:
    """Offset and bytes of the end-of-central-directory record; ``None`` offset when the file is not a zip."""
    # torch (miniz) never writes an archive comment, so the record sits at the very end; a comment of up to
    # TAIL_READ - 22 bytes is still found. A zip whose end record is not in the tail is not a torch file.
    tail = r.read_tail(TAIL_READ)
    pos = len(tail)
    while True:
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            return -1, b""
        if pos + 22 <= len(tail):
            (comment,) = struct.unpack("<H", tail[pos + 20 : pos + 22])
            if pos + 22 + comment == len(tail):
                return r.tail_at + pos, tail[pos : pos + 22]


def central_directory(r: _Reader) -> list[Entry]:
    where = r.where
    eocd_at, eocd = _find_eocd(r)
    if eocd_at < 0:
        raise _NotZip()
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = struct.unpack("<IHHHHIIH", eocd)
    end_of_cd = eocd_at
    if eocd_at >= 20 and r.read(eocd_at - 20, 4) == b"PK\x06\x07":  # ZIP64 locator
        _, z_disk, z64_at, z_disks = struct.unpack("<IIQI", r.read(eocd_at - 20, 20))
        if z64_at + 56 > eocd_at - 20:
            raise TorchFileError(where, f"ZIP64 end record offset {z64_at} does not lie before its locator")
        z = r.read(z64_at, 56)
        if z[:4] != b"PK\x06\x06":
            raise TorchFileError(where, f"no ZIP64 end record at offset {z64_at}")
        (_, rec_size, _, _, disk, cd_disk, n_disk, n_total64, cd_size64, cd_offset64) = struct.unpack("<IQHHIIQQQQ", z)
        for small, big, what in ((n_total, n_total64, "entry count"), (cd_size, cd_size64, "directory size"), (cd_offset, cd_offset64, "directory offset")):
            if small not in (0xFFFF, 0xFFFFFFFF) and small != big:
                raise TorchFileError(where, f"ZIP64 {what} {big} disagrees with the end record's {small}")
        n_total, cd_size, cd_offset, end_of_cd = n_total64, cd_size64, cd_offset64, z64_at
        n_disk = n_total if n_disk == 0xFFFF else n_disk
    elif 0xFFFFFFFF in (cd_size, cd_offset) or n_total == 0xFFFF:
        raise TorchFileError(where, "end record says ZIP64 but the file has no ZIP64 locator")
    if disk or cd_disk or n_disk != n_total:
        raise TorchFileError(where, "multi-disk zip archives are not supported")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise TorchFileError(where, f"central directory is {cd_size} bytes, over the {MAX_CENTRAL_DIRECTORY}-byte limit")
    if n_total > MAX_ENTRIES or n_total * 46 > cd_size:
        raise TorchFileError(where, f"central directory of {cd_size} bytes cannot hold {n_total} entries")
    if cd_offset + cd_size != end_of_cd:
        raise TorchFileError(where, f"central directory [{cd_offset}, {cd_offset + cd_size}) does not end where its end record starts ({end_of_cd}): truncated or prefixed zip")
    cd = r.read(cd_offset, cd_size)
    entries, pos, names = [], 0, set()
    for i in range(n_total):
        if pos + 46 > len(cd) or cd[pos : pos + 4] != b"PK\x01\x02":
            raise TorchFileError(where, f"central directory entry {i} of {n_total} is missing or corrupt (truncated central directory)")
        (flags, method, _, _, _, csize, usize, nlen, elen, clen, _, _, _, offset) = struct.unpack("<8xHHHHIIIHHHHHII", cd[pos : pos + 46])
        if pos + 46 + nlen + elen + clen > len(cd):
            raise TorchFileError(where, f"central directory entry {i} runs past the directory (truncated central directory)")
        raw = cd[pos + 46 : pos + 46 + nlen]
        extra = cd[pos + 46 + nlen : pos + 46 + nlen + elen]
        pos += 46 + nlen + elen + clen
        name = raw.decode("utf-8", errors="replace") if flags & 0x800 or raw.isascii() else raw.decode("cp437")
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset, name, where)
        if not name or name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("..", ".") for p in name.split("/")) or ":" in name.split("/")[0]:
            raise TorchFileError(where, f"zip entry {_q(name)} is not a plain relative path")
        if name in names:
            raise TorchFileError(where, f"zip entry {_q(name)} appears twice")
        if flags & 0x1:
            raise TorchFileError(where, f"zip entry {_q(name)} is encrypted")
        if offset + 30 > cd_offset or csize > cd_offset:
            raise TorchFileError(where, f"zip entry {_q(name)} lies outside the data area (offset {offset}, {csize} bytes)")
        names.add(name)
        entries.append(Entry(name, method, flags, csize, usize, offset))
    if pos != len(cd):
        raise TorchFileError(where, f"central directory holds {len(cd) - pos} bytes after its {n_total} entries")
    return entries


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, name: str, where: str) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos : pos + 4])
        body = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if tag != 0x0001:
            continue
        vals, i = [], 0
        for v in (usize, csize, offset):
            if v == 0xFFFFFFFF:
                if i + 8 > len(body):
                    raise TorchFileError(where, f"zip entry {_q(name)} has a short ZIP64 extra field")
                vals.append(struct.unpack("<Q", body[i : i + 8])[0])
                i += 8
            else:
                vals.append(v)
        return vals[0], vals[1], vals[2]
    if 0xFFFFFFFF in (usize, csize, offset):
        raise TorchFileError(where, f"zip entry {_q(name)} needs a ZIP64 extra field and has none")
    return usize, csize, offset


class _NotZip(Exception):
    pass


def read_entry(r: _Reader, e: Entry, limit: int) -> bytes:
    """The bytes of one (small) entry: its local header and data in one read when the guess holds."""
    where = r.where
    if e.usize > limit or e.csize > limit:
        raise TorchFileError(where, f"{_q(e.name)} is {max(e.usize, e.csize)} bytes, over the {limit}-byte limit")
    want = min(30 + len(e.name.encode()) + LOCAL_EXTRA_GUESS + e.csize, r.size - e.offset)
    buf = r.read(e.offset, want)
    if len(buf) < 30 or buf[:4] != b"PK\x03\x04":
        raise TorchFileError(where, f"no local header for {_q(e.name)} at offset {e.offset}")
    nlen, elen = struct.unpack("<HH", buf[26:30])
    start = 30 + nlen + elen
    local_name = buf[30 : 30 + nlen] if len(buf) >= 30 + nlen else r.read(e.offset + 30, nlen)
    if local_name.decode("utf-8", errors="replace") != e.name and local_name.decode("cp437") != e.name:
        raise TorchFileError(where, f"local header names {_q(local_name.decode('utf-8', errors='replace'))}, central directory {_q(e.name)}")
    if len(buf) >= start + e.csize:
        raw = buf[start : start + e.csize]
    else:
        raw = r.read(e.offset + start, e.csize)
    if e.method == 0:
        if e.csize != e.usize:
            raise TorchFileError(where, f"stored entry {_q(e.name)} declares {e.csize} bytes stored but {e.usize} uncompressed")
        return raw
    if e.method == 8:  # deflate, bounded: never inflate past the declared size
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(raw, e.usize + 1)
        except zlib.error as err:
            raise TorchFileError(where, f"{_q(e.name)} is not valid deflate data ({err})") from None
        if len(out) != e.usize:
            raise TorchFileError(where, f"{_q(e.name)} inflates to more or less than its declared {e.usize} bytes")
        return out
    raise TorchFileError(where, f"{_q(e.name)} uses zip compression method {e.method}, which torch never writes")


# ------------------------------------------------------------------------------------------------------ the reader
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


def read_torch_zip(source, name: str, where: str) -> TorchRead:
    """Read a torch zip's tensors through ``source``: the tail, maybe the central directory, then data.pkl."""
    r = _Reader(source, where)
    entries = central_directory(r)
    if not entries:
        raise TorchFileError(where, "empty zip archive: not a PyTorch checkpoint")
    top = entries[0].name.split("/", 1)[0]
    by_name = {e.name: e for e in entries}
    pkl = by_name.get(f"{top}/data.pkl")
    if pkl is None:
        raise TorchFileError(where, f"zip holds no {_q(top + '/data.pkl')}: not a PyTorch checkpoint")
    data = read_entry(r, pkl, MAX_PICKLE_BYTES)
    result, end = unpickle(data, where)
    if end != len(data):
        raise TorchFileError(where, f"data.pkl has {len(data) - end} bytes after its STOP opcode")
    prefix = f"{top}/data/"
    sizes = {e.name[len(prefix) :]: e.usize for e in entries if e.name.startswith(prefix)}
    walked = walk(result.root, name)
    records, data_bytes, extra = check_storages(walked, sizes, where, name)
    ties, tie_findings = storage_ties(walked.tensors, name)
    findings = unsafe_findings(result, name) + list(walked.findings) + list(tie_findings) + extra
    # where --verify-ties may read a storage: a stored entry whose bytes are its whole size (anything else: not read)
    stored = {e.name[len(prefix) :]: ("zip", e.offset) for e in entries if e.name.startswith(prefix) and e.method == 0 and e.csize == e.usize}
    return TorchRead(tuple(records), ties, tuple(findings), len(data), data_bytes, r.bytes_read, r.reads, stored, strided(walked))


def read_pytorch(source, name: str, where: str):
    """formats.READERS["pytorch"]: a torch zip, or (pre-1.6) a legacy pickle stream."""
    from ..dispatch import FileRead

    try:
        got = read_torch_zip(source, name, where)
        fmt = "pytorch"
    except _NotZip:
        from .legacy import read_legacy

        got = read_legacy(source, name, where)
        fmt = "pytorch-legacy"
    record = FileRecord(
        path=name,
        size=source.size(),
        header_bytes=got.pickle_bytes,
        tensors=len(got.tensors),
        header_only=False,
        bytes_read=getattr(source, "bytes_read", got.bytes_read),
        format=fmt,
        storages=MappingProxyType(got.storages),
        strided=got.strided,
    )
    return FileRead(record, got.tensors, got.ties, got.findings, data_bytes=got.data_bytes)
