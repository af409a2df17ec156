"""The ICT-FaceKit head rig: topology, parts, bases, skeleton, ARKit blendshapes.

Layout: this folder sits at the repository root (the product layout), but it is
installed and imported only as ``avatarsdk.rigs``: pyproject.toml maps it with
``[tool.setuptools.package-dir] "avatarsdk.rigs" = "rigs"``. That mapping is the
only trick; there is no top-level ``rigs`` package and no sys.path change. Tools
that resolve imports from the tree (rather than from the installed package) need
the same mapping, e.g. an editable install (``pip install -e .``, what ``make
setup`` does).
"""

from avatarsdk.rigs.ict import LANDMARKS68, PARTS, IctData, load_data, locate
from avatarsdk.rigs.model import FaceModel, blend_shapes, load_ict

__all__ = ["FaceModel", "IctData", "LANDMARKS68", "PARTS", "blend_shapes", "load_data", "load_ict", "locate"]
