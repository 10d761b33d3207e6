"""Write ckptcount/analysis/transformers_table.json from the records of scripts/sweep_transformers.py.

Each sweep record holds, for one tiny model saved by ``save_pretrained``, the names of the floating-point persistent
buffers and of the parameters as the file holds them, the ``tie_word_embeddings`` the model was built with, and
whether its output embeddings' weight then was its input embeddings' weight. This script:

* per model type, collects the buffer names with whole-number path parts zeroed (``layers.3.x`` -> ``layers.0.x``);
* drops any entry that, under ckptcount's matching rule (ckptcount.analysis.transformers_table), would also match one of
  that model type's parameters, and says so (none did for transformers 5.24);
* checks that no generic buffer row of ckptcount.analysis.classify matches a parameter of any swept model (outside
  ``PARAMETER_IN``'s exceptions), and exits 1 listing them if one does;
* per model type where the name rules' embeddings are not transformers' ``nn.Embedding`` weights (what
  ``num_parameters(exclude_embeddings=True)`` subtracts), lists the latter;
* per model type, the biases whose file name does not end in ``bias`` (Mistral Large 4's ``ssmax_scaling.b``) and
  the 1-D ``...bias`` file names the model does not call a bias (MiMo-V2-Flash's ``attention_sink_bias``, the
  model's ``sinks``);
* names, per class that ties it, the output head as the model names it (``output_projection.weight``);
* lists the classes that, built with ``tie_word_embeddings=True`` (or a config class without that setting), keep
  their output head's weight apart from every other parameter (their config's setting does not tie them).

    python scripts/sweep_transformers.py --workdir /tmp/sw_a
    python scripts/sweep_transformers.py --mappings seq2seq,masked --workdir /tmp/sw_b
    python scripts/make_transformers_table.py /tmp/sw_a/results.jsonl /tmp/sw_b/results.jsonl

A class recorded in several files keeps its last record (rerun a few types with ``--only`` into a third file after
changing the sweep).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ckptcount.analysis import transformers_table  # noqa: E402
from ckptcount.analysis.classify import PARAMETER_IN, _buffer_name, component_of, shape_of_name  # noqa: E402
from ckptcount.records import EMBEDDING_COMPONENTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.jsonl files of sweep_transformers.py")
    parser.add_argument("--out", type=Path, default=ROOT / "ckptcount" / "transformers_table.json")
    args = parser.parse_args()

    buffers: dict[str, set[str]] = defaultdict(set)
    parameters: dict[str, set[str]] = defaultdict(set)
    head_tied: dict[str, bool | None] = {}
    named_bias: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"bias": set(), "weight": set()})
    embeddings: dict[str, set[str]] = defaultdict(set)
    disagree: set[str] = set()
    heads: dict[str, str] = {}
    import transformers

    version = transformers.__version__
    records = 0
    for path in args.results:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "file_parameters" not in r:
                continue  # skipped or failed: nothing was saved
            records += 1
            mt = r["type"]
            buffers[mt].update(shape_of_name(n) for n in r["file_buffers"])
            for kind, names in r.get("bias_exceptions", {}).items():
                named_bias[mt][kind].update(shape_of_name(n) for n in names)
            if "file_embeddings" in r:
                stored = {shape_of_name(n) for n in r["file_parameters"]}
                table_side = {shape_of_name(n) for n in r["file_embeddings"]}
                rules_side = {n for n in stored if component_of(n) in EMBEDDING_COMPONENTS}
                embeddings[mt].update(table_side)
                if rules_side != table_side & stored:
                    disagree.add(mt)
            parameters[mt].update(shape_of_name(n) for n in r["file_parameters"])
            if r.get("tie_word_embeddings") is not False:  # true, or a config class without the setting
                head_tied[r["class"]] = r.get("head_tied")  # a later file's record of the class wins
                if r.get("head_tied") and r.get("head_param"):
                    heads[r["class"]] = r["head_param"]

    # entries that would also match a parameter of the same model type: dropped
    dropped = []
    for mt, names in buffers.items():
        for entry in sorted(names):
            match = transformers_table.matcher([entry])
            clash = sorted(p for p in parameters[mt] if match(p))
            if clash:
                names.discard(entry)
                dropped.append(f"{mt}: {entry} (matches parameter {clash[0]})")

    # generic buffer rows must not match any swept model's parameters
    wrong = []
    for mt, names in parameters.items():
        for p in sorted(names):
            why = _buffer_name(p)
            # the causal-mask rows name real biases too: classify decides those by rank (a 1-D one is a bias)
            if why and why != "causal mask" and mt not in PARAMETER_IN.get(why, ()):
                wrong.append(f"{mt}: parameter {p} matches the buffer row {why!r}")

    table = {
        "transformers": version,
        "generated_by": "scripts/sweep_transformers.py + scripts/make_transformers_table.py",
        "buffers": {mt: sorted(names) for mt, names in sorted(buffers.items()) if names},
        "untied_heads": sorted(c for c, v in head_tied.items() if v is False),
        "heads": {c: heads[c] for c in sorted(heads) if head_tied.get(c)},
        "embeddings": {mt: sorted(embeddings[mt]) for mt in sorted(disagree)},
        "biases": {mt: {k: sorted(v) for k, v in named_bias[mt].items() if v} for mt in sorted(named_bias) if any(named_bias[mt].values())},
    }
    args.out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    n = sum(len(v) for v in table["buffers"].values())
    print(f"{records} saved models read; {len(table['buffers'])} model types with {n} buffer names; "
          f"{len(table['untied_heads'])} classes never tie their head; {len(table['heads'])} head names; "
          f"{len(table['embeddings'])} model types whose nn.Embedding weights the name rules miss; written to {args.out}")
    for d in dropped:
        print(f"dropped: {d}")
    if wrong:
        print("\n".join(wrong))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
