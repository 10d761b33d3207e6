"""report.indented writes exactly what json.dumps(indent=2, ensure_ascii=False) writes (the JSON report's bytes)."""

from __future__ import annotations

import json
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcount import audit
from ckptcount.report.render import indented, to_json

from conftest import FIXTURES

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.lists(st.text(), max_size=5) | st.dictionaries(keys, inner, max_size=5)
    | st.tuples(inner, inner) | st.builds(OrderedDict, st.dictionaries(st.text(), inner, max_size=3)),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(documents)
def test_indented_is_json_dumps_byte_for_byte(doc):
    assert indented(doc) == json.dumps(doc, indent=2, ensure_ascii=False)


def test_real_reports_are_written_as_json_dumps_writes_them():
    from ckptcount.report.render import target_dict

    for name in ("gpt2", "gpt2-medium"):
        report = audit(str(FIXTURES / name))
        for options in ({}, {"tensors": True, "layers": True}):
            doc = {"schema_version": 3, "targets": [target_dict(report, **options)]}
            assert to_json([report], **options) == json.dumps(doc, indent=2, ensure_ascii=False)
