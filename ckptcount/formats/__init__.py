"""What one checkpoint file's header says: a ``FileRead`` (file record, tensor records, ties, findings) per file.

One module per format (safetensors, GGUF, PyTorch zip and legacy pickles); :mod:`.dispatch` picks the reader by file
name. Readers see only a ``ByteSource`` and never read tensor data.
"""
