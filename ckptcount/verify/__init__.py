"""The optional content check (``--verify-ties``): read only the tied tensors' byte spans and compare them.

* :mod:`.run`: ``verify_report``: which pairs to check, and what their numbers mean (the audit findings).
* :mod:`.spans`: where a tensor's bytes are in each format, and reading them (local ``preadv``, HTTP ranges).
* :mod:`.compare`: one pair (or one tensor) streamed in row blocks within one host-memory budget.
* :mod:`.backends`: numpy on the CPU, torch on a GPU: raw bytes decoded and reduced to float64 moments.
"""
