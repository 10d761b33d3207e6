"""What a ``Checkpoint`` means: each tensor's class (weight, bias, buffer; component, layer), ties, the exact counts,
quantization and MoE views, and the memory preflight. Pure functions of records; no I/O beyond package data."""
