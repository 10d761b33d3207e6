"""The names a torch checkpoint's pickle may use: storage classes and dtypes (with their item sizes), the
tensor-rebuild functions, the allowlist of globals, and the modules whose attributes a finding calls dangerous.

Data only: the pickle machine (:mod:`.unpickler`) and the walker (:mod:`.walker`) look names up here."""

from __future__ import annotations

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
