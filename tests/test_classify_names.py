"""classify() shares one table lookup between names that differ only in their digits (classify._plan). Property test:
a batch of names gives, name by name, what each name gives alone, and the layer the regexes (classify.layer_of) find.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptcount.analysis.classify import classify, classify_all, gather, layer_of, split_suffix
from ckptcount.records import TensorRecord

PARTS = ["h", "layers", "blocks", "encoder", "decoder", "mlp", "attn", "self_attn", "experts", "fc1", "fc3", "fc",
         "ln_1", "ln_f", "norm", "wte", "lm_head", "c_fc", "q_proj", "embed_tokens", "e_score_correction_bias",
         "0", "7", "12", "201", "3x", "x3y", "١٢", "bias", "weight", "masked_bias", "inv_freq",
         "self_attn.attention_sink_bias", "layer_scalar", "ssmax_scaling.b"]
names = st.lists(st.sampled_from(PARTS), min_size=1, max_size=7).map(".".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(names, st.sampled_from([(4, 4), (4,), (1, 1, 4, 4)]), st.sampled_from(["F32", "BF16", "I64"])),
                min_size=1, max_size=40, unique_by=lambda x: x[0]),
       st.sampled_from([None, "ernie4_5_moe", "mimo_v2_flash", "gemma4_text", "mistral_large4_text"]), st.data())
def test_a_batch_classifies_each_name_as_it_would_alone(entries, model_type, data):
    tensors = [TensorRecord(n, dt, shape, "f.safetensors") for n, shape, dt in entries]
    held = {n: data.draw(st.sampled_from(["FP8 scale", "packed"])) for n, _, _ in entries if data.draw(st.booleans())}
    batch = classify(tensors, model_type, held)
    assert classify_all(tensors, model_type, held) == gather(batch)  # the groups made with the records = found in them
    for t, c in zip(tensors, batch):
        stem = split_suffix(t.name)[0]  # with the tensors of its stem: the norm rule looks at their ranks
        alone = classify([t] + [x for x in tensors if split_suffix(x.name)[0] == stem and x is not t], model_type, held)[0]
        assert c == alone, t.name
        assert (c.kind, c.reason) == ("buffer", held[t.name]) if t.name in held else c.reason not in ("FP8 scale", "packed")
        assert c.layer == layer_of(t.name), t.name


def test_digits_inside_words_are_not_shared():
    names = ["blocks.1.mlp.fc1.weight", "blocks.2.mlp.fc3.weight", "blocks.3.mlp.fc1.weight", "model.fc1.weight", "model.fc3.weight"]
    out = classify([TensorRecord(n, "F32", (4, 4), "f") for n in names])
    assert [c.component for c in out] == ["mlp", "mlp", "mlp", "mlp", "other"]
    assert [c.layer for c in out] == ["1", "2", "3", None, None]


def test_the_inline_gathering_matches_gathering_afterwards_on_real_checkpoints():
    from conftest import FIXTURES

    from ckptcount.api import load
    from ckptcount.analysis.count import count
    from ckptcount.analysis.tying import find_ties

    for name in ("gpt2", "gpt2-medium"):
        ck = load(str(FIXTURES / name))
        index = classify_all(ck.tensors)
        assert index == gather(index.records)
        assert index.unique and len(index.names) == len(ck.tensors)
        ties = find_ties(ck, index.records, index)
        assert ties == find_ties(ck, index.records) and ties  # gpt2 ties wte to the absent lm_head
        assert count(index.records, ties, index) == count(index.records, ties)


FP8_PARTS = PARTS + ["weight_scale_inv", "weight_scale", "input_scale", "k_scale", "scale", "inv", "w1_scale", "weight_scale_invx"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.sampled_from(FP8_PARTS), min_size=1, max_size=6).map(".".join),
                          st.sampled_from([(4, 4), (4,), ()]), st.sampled_from(["F32", "F8_E4M3", "I64"])), min_size=1, max_size=30),
       st.sampled_from([None, "deepseek_v3", "ernie4_5_moe"]))
def test_metadata_by_last_part_is_the_metadata_by_name(entries, model_type):
    """classify_all's buffers_by_last (FP8 metadata, decided once per name shape) classifies and gathers exactly as
    the same metadata given name by name (what quant.prepare's pass over the names gives: quant._meta_reason), names
    stored twice included; the names it found are that map, in the same order."""
    from ckptcount.analysis.quant import _BY_LAST_PART, Scheme, _meta_reason

    tensors = [TensorRecord(n, dt, shape, "f.safetensors") for n, shape, dt in entries]
    scheme = Scheme("fp8", 8, None, "test", {})
    by_name: dict[str, str] = {}
    for t in tensors:
        reason = _meta_reason(t.name, scheme, set())
        if reason is not None:
            by_name.setdefault(t.name, reason)
    by_rule = classify_all(tensors, model_type, None, _BY_LAST_PART["fp8"])
    assert by_rule == classify_all(tensors, model_type, by_name)
    assert list(by_rule.buffers_by_last.items()) == list(by_name.items())
