"""Whether a header or index is worth decoding with msgspec, which this process imports only once it pays off.

msgspec's typed decoding takes ~0.2 s off a 90,000-tensor audit (``safetensors_header._fast``,
``local._fast_index``), but importing it costs ~20 ms: about what it saves on 1 MiB of headers, and a tenth of a whole
``ckptcount gpt2`` run (15 KB of header). So the standard library's ``json`` decodes everything until this process has
seen :data:`THRESHOLD` bytes of headers and indexes in all; from there on msgspec is imported and used. Either way
the result is the same: the msgspec paths accept only what ``json`` and the rules accept, with the same records.
"""

from __future__ import annotations

THRESHOLD = 1 << 20  # bytes of JSON seen before msgspec is used

_seen = 0


def worth_it(nbytes: int) -> bool:
    """Count ``nbytes`` of JSON about to be decoded; true once the process has seen :data:`THRESHOLD` bytes in all.

    (Threads may race on the count; a lost increment only delays the switch.)"""
    global _seen
    _seen += nbytes
    return _seen >= THRESHOLD
