"""dump_tree / load_tree: the benchmark's fit cache without pickle."""

import dataclasses
import io

import numpy as np
import pytest
import torch

from avatarsdk.datatypes import FaceParse, Landmarks
from avatarsdk.errors import InputError
from avatarsdk.files import dump_tree, load_tree
from avatarsdk.parse import parse_face


def test_round_trip_keeps_dataclasses_arrays_tensors_and_plain_values(tmp_path):
    rng = np.random.default_rng(0)
    tree = {
        "lm": (np.float32(1.5), rng.normal(size=(3, 2)).astype(np.float32)),
        "mask": rng.random((4, 5)) > 0.5,
        "t": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "n": None, "s": "x", "i": 3, "f": 0.25, "l": [1, (2, 3)], 7: "int key",
    }
    path = dump_tree(tmp_path / "t.pt", tree)
    back = load_tree(path)
    assert back["lm"][1].dtype == np.float32 and np.array_equal(back["lm"][1], tree["lm"][1])
    assert back["mask"].dtype == bool and np.array_equal(back["mask"], tree["mask"])
    assert torch.equal(back["t"], tree["t"]) and back["l"] == [1, (2, 3)] and back[7] == "int key"
    assert (back["n"], back["s"], back["i"], back["f"]) == (None, "x", 3, 0.25)


def _same(a, b):
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_package_dataclasses_come_back_field_by_field(tmp_path, photo, lm):
    parsing = parse_face(photo, lm, method="bisenet")
    tree = {"photo": photo, "landmarks": lm, "parsing": parsing}
    back = load_tree(dump_tree(tmp_path / "fit.pt", tree))
    assert type(back["landmarks"]) is Landmarks and type(back["parsing"]) is FaceParse
    for k in tree:
        assert _same(tree[k], back[k]), k


def test_a_class_outside_the_package_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"__dataclass__": "collections:OrderedDict", "fields": {}}, buf)
    (tmp_path / "bad.pt").write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="outside the package"):
        load_tree(tmp_path / "bad.pt")


def test_what_it_cannot_keep_is_refused(tmp_path):
    with pytest.raises(TypeError):
        dump_tree(tmp_path / "x.pt", {"o": object()})
    assert not (tmp_path / "x.pt").exists()
