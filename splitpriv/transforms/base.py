"""The registry of message transforms that are not privacy defenses: compressions of the message.

Adding one is one file with a :class:`~splitpriv.cut.MessageTransform` subclass decorated with
``@register_transform``; it is listed under ``transforms:`` in a run config (``--transform NAME``),
after the defenses: privacy first, then what shapes the bytes on the wire.
"""
from __future__ import annotations

from splitpriv.registry import Registry

TRANSFORMS = Registry("transform")  # name -> MessageTransform subclass
register_transform = TRANSFORMS.register
