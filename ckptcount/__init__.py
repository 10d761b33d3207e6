"""ckptcount: exact parameter counts, weight/bias split and tied tensors, from checkpoint headers alone."""

from .api import analyse, audit, audit_many, diff_targets, load
from .errors import CkptError
from .records import (
    BufferGroup,
    Checkpoint,
    Classified,
    Counts,
    DtypeTally,
    FileRecord,
    Finding,
    Report,
    Tally,
    TensorRecord,
    TieGroup,
)

__version__ = "0.1.0"

__all__ = [
    "BufferGroup",
    "Checkpoint",
    "CkptError",
    "Classified",
    "Counts",
    "DtypeTally",
    "FileRecord",
    "Finding",
    "Report",
    "Tally",
    "TensorRecord",
    "TieGroup",
    "analyse",
    "audit",
    "audit_many",
    "diff_targets",
    "load",
]
