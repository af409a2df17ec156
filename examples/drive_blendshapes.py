"""Read a saved avatar and drive its blendshapes: pose the mesh, render the poses side by side.

    avatarsdk random --source ict --seed 7 -o out/npc.glb          # writes out/npc.glb and out/npc.avatar
    python examples/drive_blendshapes.py out/npc.avatar -o out/npc_poses.png

A pose is a dict of ARKit weights; the posed vertices are the neutral mesh plus
the weighted sum of the avatar's blendshape deltas (what an engine does with
morph targets, before skinning).
"""

from __future__ import annotations

import argparse

import numpy as np

from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.files import atomic_write_bytes, png_bytes
from avatarsdk.preview import render_views
from avatarsdk.avatarfile import load_avatar

POSES = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "cheekSquintLeft": 0.4, "cheekSquintRight": 0.4},
    "surprise": {"jawOpen": 0.5, "browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8,
                 "eyeWideLeft": 0.6, "eyeWideRight": 0.6},
    "wink": {"eyeBlinkLeft": 1.0, "mouthSmileLeft": 0.5},
}


def posed_vertices(avatar, weights: dict[str, float]) -> np.ndarray:
    """[V, 3] neutral vertices plus the weighted blendshape deltas."""
    index = {n: i for i, n in enumerate(avatar.rig.blendshape_names)}
    out = np.asarray(avatar.vertices, np.float64).copy()
    for name, w in weights.items():
        out += w * avatar.rig.blendshapes[index[name]]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("avatar", help="a .avatar file (written by create, random and batch)")
    ap.add_argument("-o", "--output", required=True, help="PNG with one front view per pose")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    avatar = load_avatar(args.avatar)
    mesh = load_glb(to_glb(avatar))
    tiles = [render_views(mesh, weights=w, views=((0.0, 0.0),), size=args.size) for w in POSES.values()]
    moved = {name: float(np.abs(posed_vertices(avatar, w) - avatar.vertices).max() * 1000)
             for name, w in POSES.items()}
    atomic_write_bytes(args.output, png_bytes(np.concatenate(tiles, 1)))
    print("largest vertex motion per pose (mm):", ", ".join(f"{k} {v:.1f}" for k, v in moved.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
