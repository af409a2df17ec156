"""One error hierarchy for the SDK: every failure a user can cause is an AvatarError.

The CLI maps each to one line on stderr and exit code 2. Messages carry the
measured value and the limit where there is one.
"""

from __future__ import annotations


class AvatarError(Exception):
    """Base of every error the SDK raises on purpose."""


class ConfigError(AvatarError):
    """A setting (path, option, environment variable) is missing or invalid."""


class DataError(AvatarError):
    """Model data (ICT-FaceKit files, caches) is missing, incomplete or corrupt."""


class WeightsError(AvatarError):
    """A weight file is missing, has the wrong checksum or does not match its config."""


class ExportError(AvatarError):
    """An avatar cannot be written in the requested format."""


class InputError(AvatarError):
    """A user-supplied file or value (other than a photo) is invalid."""


class OutputError(InputError):
    """The output location cannot be written (a file where a folder must be, no permission, read-only)."""


class PhotoError(AvatarError):
    """The input photo cannot be used."""


class UnreadableImage(PhotoError):
    """The file is not a decodable image (or exceeds size limits)."""


class NoFaceFound(PhotoError):
    """No face was detected in the photo."""


class MultipleFaces(PhotoError):
    """Several faces were detected and the caller asked to refuse that."""


class FaceOrientation(PhotoError):
    """The face's landmarks contradict an upright face (e.g. a face upside down that no turn fixed)."""


class FaceTooSmall(PhotoError):
    """The detected face is smaller than the minimum size."""
