"""The per-tensor records are named tuples (built once per tensor of 100k-tensor headers); they must still behave as
the immutable records the stages rely on."""

from __future__ import annotations

import copy
import pickle

import pytest

from ckptcount.records import Classified, TensorRecord, tensor_record


def test_numel_follows_shape_when_built_and_replaced():
    t = TensorRecord("h.0.mlp.c_fc.weight", "BF16", (768, 3072), "model.safetensors", 0, 768 * 3072 * 2)
    assert (t.numel, t.nbytes) == (768 * 3072, 768 * 3072 * 2)
    assert TensorRecord("scalar", "F32", (), "f").numel == 1
    assert t._replace(shape=(4, 5)).numel == 20
    with pytest.raises(TypeError):
        t._replace(numel=7)


def test_fast_constructor_builds_an_equal_record():
    slow = TensorRecord("w", "F8_E4M3", (3, 5), "s.safetensors", 10, 25)
    fast = tensor_record("w", "F8_E4M3", (3, 5), "s.safetensors", 10, 25, 15)
    assert fast == slow and hash(fast) == hash(slow) and type(fast) is TensorRecord
    assert TensorRecord("q", "Q4_K", (256,), "m.gguf", stored_bytes=144).nbytes == 144


def test_records_are_immutable_and_survive_pickle_and_copy():
    t = TensorRecord("w", "F32", (2, 3), "f", 0, 24, storage="0")
    c = Classified(t, "weight", "mlp", "3", "name")
    with pytest.raises(AttributeError):
        t.numel = 5
    with pytest.raises(AttributeError):
        c.kind = "bias"
    for x in (t, c):
        assert pickle.loads(pickle.dumps(x)) == x and copy.deepcopy(x) == x
    assert isinstance(c, Classified) and c.is_parameter and c.tensor is t
