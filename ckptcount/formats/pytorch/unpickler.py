"""The inert pickle machine: a stack machine for the pickle opcodes (protocols 0-5) that builds inert records.

``pickle.Unpickler`` imports modules and calls whatever ``GLOBAL``/``REDUCE`` name (that is how a malicious
``__reduce__`` runs ``os.system``); overriding ``find_class`` still runs the allowed callables, and torch's
``weights_only`` unpickler needs torch and builds real tensors. ``pickletools`` only disassembles: it does not build
the object graph. :class:`PickleMachine` builds inert records (:mod:`.values`): a ``GLOBAL`` becomes a
:class:`~.values.Global` value, ``REDUCE`` of a tensor-rebuild function becomes a :class:`~.values.TensorRef`,
``REDUCE``/``NEWOBJ``/``INST``/``BUILD`` of anything else becomes an :class:`~.values.Opaque` value and an
``unsafe-pickle`` finding naming the module and attribute. Nothing is imported, called or instantiated.

Memory is bounded by the cap on the stream's size (:data:`MAX_PICKLE_BYTES`): every opcode's length field is checked
against the bytes that remain, and the machine is iterative (no recursion on hostile nesting). Persistent ids
(storages) are read by :func:`storage_from_pid` (zip files) or the legacy reader's own function.
"""

from __future__ import annotations

import codecs
import struct

from ...errors import TorchFileError
from .values import Global, Opaque, PDict, PickleResult, PList, PTuple, StorageRef, TensorRef, _q
from .vocabulary import (
    OTHER_TORCH_REBUILDERS,
    PARAMETER_REBUILDERS,
    PY2_MODULES,
    SAFE_GLOBALS,
    STORAGE_DTYPES,
    TENSOR_REBUILDERS,
    TORCH_DTYPES,
)

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # data.pkl of a 10k-tensor state dict is ~2 MB


class Truncated(Exception):
    """A prefix of the stream ran out (``PickleMachine(partial=True)``): ``args[0]`` is the length it needed."""



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
        # A flat checklist of opcodes, one branch each, kept as one function on purpose: this is the hot loop (one
        # pass per opcode of data.pkl), and the stack, metastack and memo stay locals of one frame; per-opcode
        # handlers would add a call and attribute traffic per opcode. Each branch is a few lines; the helpers below
        # (_take, _line, _call, _tensor, _extend, _setitems) hold the logic that is more than a stack move.
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
