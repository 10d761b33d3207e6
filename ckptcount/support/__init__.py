"""Speed helpers the pipeline shares, with no knowledge of checkpoints: JSON decoding and pausing the collector."""
