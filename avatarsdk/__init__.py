"""avatarsdk: normalized 3D head avatars from one photo, rigged for game engines."""

from avatarsdk.errors import AvatarError

__version__ = "0.1.0"

__all__ = ["AvatarError", "__version__"]
