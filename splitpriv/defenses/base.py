"""What makes a component at the cut a privacy defense, and the registry of defenses.

A defense is a :class:`~splitpriv.cut.CutComponent` that protects the private input, playing one or
several roles of the cut pipeline: DP noise is a message transform, NoPeek a client loss term, the
decoder defense a loss term and a trainable part (its simulated attacker), DP-SGD a training
privatizer. Adding one is one file with a class deriving from ``Defense`` and its roles, decorated
with ``@register_defense``; its ``__init__`` parameters become config keys and command-line flags
(``splitpriv train --defense NAME --PARAMETER VALUE``).
"""
from __future__ import annotations

from splitpriv.cut import CutComponent
from splitpriv.registry import Registry

DEFENSES = Registry("defense")  # name -> Defense subclass
register_defense = DEFENSES.register


class Defense(CutComponent):
    """A privacy defense; its roles come from the role interfaces it also derives from."""

    def rehearsal_spec(self, spec: dict, private_samples: int, batch_size: int, epochs: int) -> dict:
        """This defense's ``spec`` for a rehearsal (``splitpriv predict``) that trains fewer epochs than the
        private run of ``private_samples`` images, ``batch_size``, ``epochs``: a defense whose strength the
        private run derives from its length returns the spec that fixes the strength it would have there;
        the rest are unchanged."""
        return spec
