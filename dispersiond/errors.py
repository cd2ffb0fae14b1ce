"""Exceptions a user can act on. Messages say what failed and what to do; they
never contain key material or plaintext."""
from __future__ import annotations


class DispersiondError(Exception):
    """Base of every error dispersiond raises on purpose."""


class ConfigError(DispersiondError):
    """The configuration is invalid; the message names the key path and what is allowed."""


class CodecError(DispersiondError):
    """A fragment could not be encoded or decoded."""


class FormatError(CodecError):
    """Not a dispersiond fragment, or a version this build does not read."""


class WrongKey(CodecError):
    """The private container was wrapped under a different master key."""


class IntegrityError(CodecError):
    """Authentication failed: a fragment was altered, or the key is wrong (paper-v1)."""


class TruncatedError(IntegrityError):
    """A fragment ended before its declared length."""


class ExtendedError(IntegrityError):
    """A fragment has bytes beyond its declared length."""


class FragmentMismatch(IntegrityError):
    """The public and private fragments belong to different files or versions."""
