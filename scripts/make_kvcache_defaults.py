"""Write ckptcount/analysis/kvcache_defaults.json: per ``model_type``, the transformers config class defaults that size a KV
cache when config.json leaves a key out (``head_dim``: Qwen3Config 128, Gemma 256; ``sliding_window``: MistralConfig
4096; ``num_key_value_heads``...). Read from the dataclass fields of every config class the installed transformers
has; only integer defaults are kept (None means "derived", which ckptcount derives and says so).

    python scripts/make_kvcache_defaults.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

KEYS = ("head_dim", "num_key_value_heads", "sliding_window", "sliding_window_pattern", "max_window_layers", "full_attention_interval", "attention_chunk_size")
OUT = Path(__file__).resolve().parent.parent / "ckptcount" / "kvcache_defaults.json"


def main() -> None:
    import transformers
    from transformers import CONFIG_MAPPING

    table: dict[str, dict[str, int]] = {}
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            cls = CONFIG_MAPPING[model_type]
        except Exception:  # an optional dependency missing: that model type is left out
            continue
        if not dataclasses.is_dataclass(cls):
            continue
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        row = {k: fields[k] for k in KEYS if type(fields.get(k)) is int}
        if row:
            table[model_type] = row
    doc = {"transformers": transformers.__version__, "defaults": table}
    OUT.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
    print(f"{OUT}: {len(table)} model types")


if __name__ == "__main__":
    main()
