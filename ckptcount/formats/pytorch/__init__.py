"""``torch.save`` files read without torch and without executing their pickle: the zip container, an inert pickle
machine, and the walk from its result to tensor records and shared storages."""
