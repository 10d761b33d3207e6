"""``torch.save`` files read without torch and without executing their pickle, one question per module:

* :mod:`.reader`: ``read_pytorch``, the entry (a torch zip, else a legacy file); ``read_torch_zip``.
* :mod:`.zipdir`: the zip container: end-of-central-directory (ZIP64), entries, local headers, bounded reads.
* :mod:`.unpickler`: the inert pickle machine (``PickleMachine``) and the storage persistent ids.
* :mod:`.values`: the inert values the machine builds (``Global``, ``TensorRef``, ``Opaque``...) and its result.
* :mod:`.vocabulary`: storage classes, dtypes and item sizes, the rebuild functions, the allowlist of globals.
* :mod:`.walker`: the object graph to tensor records, storages checked, shared-storage ties, unsafe findings.
* :mod:`.legacy`: pre-1.6 (non-zip) files: five pickles in a row, then the raw storages.
"""
