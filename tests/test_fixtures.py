"""The four GPT-2 fixtures give exactly the numbers in shared/FACTS.md (computed independently of ckptcount)."""

import pytest

from ckptcount import audit

# From FACTS.md: transformers' GPT2Model on the meta device, cross-checked against published Hub figures.
FACTS = {
    "gpt2": dict(tensors=160, params=124_439_808, stored=137_022_720, masks=12_582_912, bias_t=73, bias_e=102_144, untied=163_037_184),
    "gpt2-medium": dict(tensors=316, params=354_823_168, stored=379_988_992, masks=25_165_824, bias_t=145, bias_e=271_360, untied=406_286_336),
    "gpt2-large": dict(tensors=472, params=774_030_080, stored=811_778_816, masks=37_748_736, bias_t=217, bias_e=508_160, untied=838_359_040),
    "gpt2-xl": dict(tensors=628, params=1_557_611_200, stored=1_607_942_848, masks=50_331_648, bias_t=289, bias_e=846_400, untied=1_638_022_400),
}


@pytest.mark.parametrize("name", list(FACTS))
def test_gpt2_family_matches_facts(fixtures_dir, name):
    f = FACTS[name]
    r = audit(str(fixtures_dir / name))
    c = r.counts
    assert len(r.checkpoint.tensors) == f["tensors"]
    assert c.parameters == f["params"]
    assert c.stored_elements == f["stored"]
    assert c.buffer_elements == f["masks"]
    assert [(b.reason, b.elements) for b in c.buffers] == [("causal mask", f["masks"])]
    assert (c.biases.tensors, c.biases.elements) == (f["bias_t"], f["bias_e"])
    assert c.weights.elements == f["params"] - f["bias_e"]
    assert c.untied_parameters == f["untied"]
    assert [(g.names, g.stored) for g in r.ties] == [(("wte.weight", "lm_head.weight"), ("wte.weight",))]
    assert "tie_word_embeddings absent" in r.ties[0].evidence
    assert all(fr.header_only for fr in r.checkpoint.files)


def test_gpt2_split_and_conventions(fixtures_dir):
    c = audit(str(fixtures_dir / "gpt2")).counts
    comp = {k: v.elements for k, v in c.by_component.items()}
    assert comp["token_embedding"] + comp["position_embedding"] == 39_383_808
    assert comp["norm"] == 38_400
    linear = comp["attention"] + comp["mlp"]
    assert linear == 84_934_656 + 82_944  # matrix weights + linear biases
    assert c.non_embedding == {"nanogpt": 123_653_376, "transformers": 85_056_000}
    assert round(100 * c.weights.elements / c.parameters, 3) == 99.918
    assert len(c.by_layer) == 12 and all(v.elements == 7_087_872 for v in c.by_layer.values())


def test_reads_exactly_the_header_bytes(fixtures_dir, monkeypatch):
    """Bytes read per file = 8 + N, counted by the byte source itself, in two reads."""
    from ckptcount.sources import files as sources

    made = []
    real = sources.LocalFile

    class Counting(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr("ckptcount.targets.local.LocalFile", Counting)
    r = audit(str(fixtures_dir / "gpt2-xl"))
    st = [s for s in made if s.name.endswith("model.safetensors")]
    assert len(st) == 1
    size = (fixtures_dir / "gpt2-xl" / "model.safetensors").stat().st_size
    assert st[0].bytes_read == size == 8 + r.checkpoint.files[0].header_bytes
    assert st[0].reads == 2
    assert r.checkpoint.files[0].bytes_read == size


def test_count_path_imports_no_torch_or_numpy(fixtures_dir):
    import subprocess
    import sys

    code = (
        "import sys, ckptcount.cli as c\n"
        "from ckptcount import audit\n"
        f"audit({str(fixtures_dir / 'gpt2')!r})\n"
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors', 'transformers', 'msgspec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # nor msgspec: 15 KB of header is not worth its import (ckptcount.support.fastjson)


def test_msgspec_is_imported_once_headers_reach_the_threshold(tmp_path):
    """A header past fastjson.THRESHOLD is decoded by msgspec (imported then); the report is the same as json's."""
    import subprocess
    import sys

    from conftest import safetensors_head

    from ckptcount.support import fastjson

    head, data = safetensors_head({f"model.layers.{i}.mlp.experts.{j}.w{k}.weight": ("BF16", [4, 4]) for i in range(60) for j in range(64) for k in (1, 2, 3)})
    assert len(head) > fastjson.THRESHOLD
    (tmp_path / "model.safetensors").write_bytes(head + b"\0" * data)
    code = (
        "import sys, json\n"
        "from ckptcount import audit\nfrom ckptcount.support import fastjson\nfrom ckptcount.formats import safetensors as sh\n"
        "threshold = int(sys.argv[2])\n"
        "fastjson.THRESHOLD = threshold\n"
        "calls = []\n"
        "fast = sh._fast\n"
        "def spy(*a):\n"
        "    got = fast(*a)\n"
        "    calls.append(got is not None)  # taken by the msgspec path, not declined to json\n"
        "    return got\n"
        "sh._fast = spy\n"
        "r = audit(sys.argv[1])\n"
        "print(json.dumps([r.counts.parameters, len(r.classified), 'msgspec' in sys.modules, sum(calls)]))"
    )
    run = lambda threshold: subprocess.run([sys.executable, "-c", code, str(tmp_path), str(threshold)], capture_output=True, text=True, check=True).stdout
    n = 60 * 64 * 3
    assert run(fastjson.THRESHOLD) == f"[{n * 16}, {n}, true, 1]\n"
    assert run(10 * fastjson.THRESHOLD) == f"[{n * 16}, {n}, false, 0]\n"  # json alone: the same report


def test_fastjson_counts_the_bytes_a_process_has_seen(monkeypatch):
    from ckptcount.support import fastjson

    monkeypatch.setattr(fastjson, "_seen", 0)
    assert not fastjson.worth_it(fastjson.THRESHOLD - 10)
    assert not fastjson.worth_it(9)
    assert fastjson.worth_it(1) and fastjson.worth_it(0)  # and from then on
