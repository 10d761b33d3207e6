"""What a target names and which files make the checkpoint: a local file or folder, a Hugging Face cache snapshot, or
a Hub repo read by range requests. Each ends in a ``Checkpoint`` record (files, tensors, ties, config, findings)."""
