"""The saved avatar (.avatar): exact round trips, determinism, and typed errors on bad files."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from avatarsdk import avatarfile
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.pipeline import random_avatar
from avatarsdk.avatarfile import load_avatar, save_avatar, topology_sha256


@pytest.fixture(scope="module")
def avatar():
    a = random_avatar(4, texture_size=64)
    # Meta as callers may leave it: numpy scalars, tuples, a NaN.
    meta = dict(a.meta) | {"np": np.float32(0.5), "pair": (1, 2), "bad": float("nan"), "photo_sha256": "ab" * 32}
    return type(a)(vertices=a.vertices, topology=a.topology, textures=a.textures, rig=a.rig, meta=meta)


@pytest.fixture(scope="module")
def data(avatar):
    return save_avatar(avatar)


def rewrite(data: bytes, member: str, new: bytes | None, *, fix_checksum: bool = True) -> bytes:
    """Copy the archive with ``member`` replaced (or removed when ``new`` is None)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    header = json.loads(src.read("avatar.json"))
    if fix_checksum and new is not None and member in header["members"]:
        header["members"][member] = {"bytes": len(new), "sha256": hashlib.sha256(new).hexdigest()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in src.namelist():
            if name == "avatar.json":
                if member != "avatar.json":
                    z.writestr(name, json.dumps(header))
                elif new is not None:
                    z.writestr(name, new)
            elif name == member:
                if new is not None:
                    z.writestr(name, new)
            else:
                z.writestr(name, src.read(name))
    return out.getvalue()


def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def test_round_trip_is_exact(avatar, data):
    b = load_avatar(data)
    assert np.array_equal(b.vertices, avatar.vertices) and b.vertices.dtype == np.float32
    t, u = avatar.topology, b.topology
    assert u.num_vertices == t.num_vertices and u.materials == t.materials and u.parts == t.parts
    for name in ("triangles", "corner_uv", "tri_material", "landmarks68"):
        assert np.array_equal(getattr(u, name), getattr(t, name)), name
    assert np.array_equal(u.head_uv, t.head_uv, equal_nan=True)
    assert topology_sha256(u) == topology_sha256(t)
    r, s = avatar.rig, b.rig
    assert s.blendshape_names == r.blendshape_names and len(s.blendshape_names) == 52
    assert np.array_equal(s.blendshapes, r.blendshapes)
    assert s.skeleton.names == r.skeleton.names
    assert np.array_equal(s.skeleton.parents, r.skeleton.parents)
    assert np.array_equal(s.skeleton.positions, r.skeleton.positions)
    assert np.array_equal(s.skin_joints, r.skin_joints) and np.array_equal(s.skin_weights, r.skin_weights)
    assert sorted(b.textures) == sorted(avatar.textures)
    for k in avatar.textures:
        assert np.array_equal(b.textures[k], avatar.textures[k]), k
    assert b.meta["seed"] == 4 and b.meta["np"] == 0.5 and b.meta["pair"] == [1, 2] and b.meta["bad"] is None
    assert b.meta["identity"] == avatar.meta["identity"]
    assert not b.vertices.flags.writeable  # the frozen types still hold read-only arrays


def test_deterministic_and_reexports_the_same_glb(avatar, data):
    assert save_avatar(avatar) == data
    again = load_avatar(data)
    assert save_avatar(again) == data
    assert to_glb(again) == to_glb(avatar)


def test_load_from_path_and_sizes(tmp_path, data):
    p = tmp_path / "a.avatar"
    p.write_bytes(data)
    assert load_avatar(p).rig.blendshape_names == load_avatar(data).rig.blendshape_names
    assert len(data) < 20e6


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d[: len(d) // 2], "corrupt avatar file"),
        (lambda d: b"glTF" + d[4:], "binary glTF"),
        (lambda d: b"hello world", "not a ZIP"),
        (lambda d: b"", "not a ZIP"),
        (lambda d: rewrite(d, "avatar.json", None), "no avatar.json"),
        (lambda d: rewrite(d, "avatar.json", b"{not json"), "not valid JSON"),
        (lambda d: rewrite(d, "avatar.json", json.dumps({"format": "other"}).encode()), "format 'other'"),
        (lambda d: rewrite(d, "avatar.json", json.dumps({"format": "avatarsdk.avatar", "version": 99}).encode()),
         "version 99"),
        (lambda d: rewrite(d, "avatar.json", json.dumps({"format": "avatarsdk.avatar", "version": 1}).encode()),
         "incomplete or malformed"),
        (lambda d: rewrite(d, "arrays/vertices.npy", None), "missing"),
        (lambda d: rewrite(d, "arrays/vertices.npy", npy(np.zeros((3, 3), np.float32))), "vertices has shape"),
        (lambda d: rewrite(d, "arrays/vertices.npy", npy(np.zeros((26719, 3), np.float64))), "dtype float64"),
        (lambda d: rewrite(d, "arrays/triangles.npy", npy(np.full((52220, 3), 10**6, np.int32))),
         "triangle indices"),
        (lambda d: rewrite(d, "arrays/skin_joints.npy", npy(np.full((26719, 4), 9, np.uint8))), "skin joint"),
        (lambda d: rewrite(d, "arrays/vertices.npy", npy(np.full((26719, 3), np.nan, np.float32))), "non-finite"),
        # An object array would need pickle: it must be refused, never unpickled.
        (lambda d: rewrite(d, "arrays/vertices.npy", npy(np.array([{"x": 1}], dtype=object))), "plain numpy"),
        (lambda d: rewrite(d, "arrays/blendshapes.npy", b"garbage" * 10, fix_checksum=False), "corrupt"),
        (lambda d: rewrite(d, "textures/skin.png", b"\x89PNG\r\n\x1a\nbroken"), "readable PNG"),
        (lambda d: rewrite(d, "textures/skin.png", b"GIF89a"), "not a PNG"),
        (lambda d: rewrite(d, "arrays/corner_uv.npy", npy(np.zeros((1, 3, 2), np.float32))), "corner_uv has shape"),
    ],
)
def test_bad_files_raise_input_error(data, make, message):
    with pytest.raises(InputError, match=message):
        load_avatar(make(data))


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_avatar(tmp_path / "nope.avatar")
    with pytest.raises(InputError, match="not a file"):
        load_avatar(tmp_path)


def test_size_limits(monkeypatch, tmp_path, data):
    monkeypatch.setattr(avatarfile, "MAX_MEMBER_BYTES", 1 << 20)  # corner_uv (1.3 MB) and blendshapes exceed it
    with pytest.raises(InputError, match="bytes uncompressed, limit 1048576"):
        load_avatar(data)
    monkeypatch.setattr(avatarfile, "MAX_FILE_BYTES", 1000)
    p = tmp_path / "big.avatar"
    p.write_bytes(data)
    with pytest.raises(InputError, match="limit 1000"):
        load_avatar(p)
    with pytest.raises(InputError, match="limit 1000"):
        load_avatar(data)


def test_save_refuses_inconsistent_avatars(avatar):
    bad = type(avatar)(vertices=avatar.vertices[:10], topology=avatar.topology, textures=avatar.textures,
                       rig=avatar.rig, meta={})
    with pytest.raises(InputError, match="vertices has shape"):
        save_avatar(bad)
    tex = dict(avatar.textures) | {"skin": np.zeros((4, 4, 3), np.float32)}
    bad = type(avatar)(vertices=avatar.vertices, topology=avatar.topology, textures=tex, rig=avatar.rig, meta={})
    with pytest.raises(InputError, match="uint8"):
        save_avatar(bad)
    tex = dict(avatar.textures) | {"../evil": np.zeros((4, 4, 3), np.uint8)}
    bad = type(avatar)(vertices=avatar.vertices, topology=avatar.topology, textures=tex, rig=avatar.rig, meta={})
    with pytest.raises(InputError, match="plain name"):
        save_avatar(bad)
