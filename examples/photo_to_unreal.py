"""One photo to an Unreal Engine package (FBX with LODs and ARKit morph targets, textures, manifest).

    python examples/photo_to_unreal.py examples/astronaut.png -o out/astronaut_ue
    python examples/photo_to_unreal.py photo.jpg -o out/me_gltf --preset gltf   # no Blender needed

The FBX presets need Blender's Python (``make setup-fbx``).
"""

from __future__ import annotations

import argparse

import avatarsdk
from avatarsdk.exporters.package import export_package


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo")
    ap.add_argument("-o", "--output", required=True, help="package folder to create")
    ap.add_argument("--preset", default="unreal", choices=["unreal", "unity", "gltf", "fbx"])
    ap.add_argument("--texture-size", type=int, default=1024)
    args = ap.parse_args(argv)
    avatar = avatarsdk.create(args.photo, texture_size=args.texture_size)  # the default mode: fit
    package = export_package(avatar, args.preset, args.output, overwrite=True)
    shapes = package.manifest["blendshapes"]
    print(f"wrote {package.path}: {shapes['count']} {shapes['convention']} morph targets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
