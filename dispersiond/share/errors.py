"""What can go wrong when a share is made or opened: one class per thing the user does
differently about it (ask for a new share, use another identity, pin the sender, ...)."""
from __future__ import annotations

from ..errors import DispersiondError


class ShareError(DispersiondError):
    """A share could not be made or opened."""


class ShareRefused(ShareError):
    """Access control said no (unknown recipient, file not protected, ...). Audited."""


class BundleFormatError(ShareError):
    """Not a share bundle, or a version this build does not read."""


class WrongIdentity(ShareError):
    """The bundle is sealed to another recipient's key."""


class BundleTampered(ShareError):
    """The bundle failed authentication: altered, truncated or extended."""


class SignatureInvalid(BundleTampered):
    """The bundle's signature does not verify under the sender key it names: forged,
    re-addressed or re-signed."""


class UnsignedBundle(ShareError):
    """A version 1 bundle: it carries no sender signature, so anyone could have made it."""


class UnknownSender(ShareError):
    """The bundle is signed by a device the recipient has not pinned."""


class LinkExpired(ShareError):
    """The bundle's links have expired."""


class ObjectGone(ShareError):
    """The public objects are no longer there (the file was re-keyed or erased)."""


class ObjectTampered(ShareError):
    """A public object does not match the digest the bundle gives for it."""


class ObjectMismatch(ObjectTampered):
    """The public objects belong to another file than the bundle's private container."""


class ObjectUnavailable(ShareError):
    """Not enough objects could be fetched (store down, link refused, network)."""
