"""The ICT-FaceKit head rig: topology, parts, bases, skeleton, ARKit blendshapes."""

from avatarsdk.rigs.ict import LANDMARKS68, PARTS, IctData, load_data, locate
from avatarsdk.rigs.model import FaceModel, blend_shapes, load_ict

__all__ = ["FaceModel", "IctData", "LANDMARKS68", "PARTS", "blend_shapes", "load_data", "load_ict", "locate"]
