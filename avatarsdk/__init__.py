"""avatarsdk: normalized 3D head avatars from one photo, rigged for game engines.

    import avatarsdk
    avatar = avatarsdk.create("photo.jpg")         # neutral, de-lit, rigged Avatar
    npc = avatarsdk.random_avatar(seed=7)          # a random ICT identity
"""

from avatarsdk.errors import AvatarError

__version__ = "0.1.0"

__all__ = ["AvatarError", "__version__", "create", "random_avatar"]


def __getattr__(name: str):
    # The pipeline pulls in torch and the rig; import it only when used.
    if name in ("create", "random_avatar"):
        from avatarsdk import pipeline  # local: lazy facade; `import avatarsdk` stays light (no torch)

        return getattr(pipeline, name)
    raise AttributeError(f"module 'avatarsdk' has no attribute {name!r}")
