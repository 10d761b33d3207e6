"""The optional content check: read only the tied tensors' byte spans and compare them (numpy, or torch on a GPU)."""
