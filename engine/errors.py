"""Errors the engine raises; the server catches them at its edge."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class CheckpointError(EngineError):
    """A model directory is missing, truncated, or does not match its config."""


class FillCancelled(EngineError):
    """A fill was cancelled before it finished."""


class DeviceError(EngineError):
    """The device asked for is not one the engine knows, or is not present on this machine."""
