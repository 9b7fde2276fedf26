"""Errors a user can cause. Each message names the bad value and what is allowed."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or unsupported."""


class TemplateError(ValueError):
    """A chat template failed to render."""
