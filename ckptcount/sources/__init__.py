"""Where bytes come from: local files inside a checkpoint folder, and HTTP range reads of a Hub file.

Every reader in :mod:`ckptcount.formats` takes a ``ByteSource`` (``name``, ``size()``, ``read(offset, length)``);
this package is the two implementations and the path and HTTP rules they enforce (no path outside the checkpoint, no
whole download when a server ignores Range).
"""
