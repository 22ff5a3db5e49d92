"""Errors a user can act on. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class SceneDiffusionError(Exception):
    """Base of every error whose message is meant for the user (CLI line, HTTP `detail`, Blender report)."""


class InvalidRequest(SceneDiffusionError, ValueError):
    """A parameter or input image is not acceptable; nothing was generated."""


class ModelUnavailable(SceneDiffusionError):
    """The model cannot be loaded: not cached offline, not found, or in a refused format."""


class UnsupportedMode(SceneDiffusionError):
    """The loaded model cannot do what the request asks (for example inpainting with a depth-only model)."""


class Cancelled(SceneDiffusionError):
    """The job was cancelled; no image is returned for it."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
