"""Who attacks, and with what: the named threat models every leakage number is about.

Each threat model grants the adversary a set of capabilities (the grants of :mod:`attacks.base`);
an attack counts against a threat model when everything it needs is granted there. Every threat
model's server sees the messages the client sends; they nest, weakest first, so that a stronger
adversary can run every weaker one's attack and its worst case is never smaller:

* ``passive``: the honest-but-curious server of split learning. It trains the server partition
  itself (``server``), knows the client's ``architecture`` and holds ``proxy`` data, but neither
  queries the client nor knows its weights.
* ``black_box``: it can also ``query`` the deployed client with inputs of its choice (a public
  inference API, or a client colluding with the server).
* ``white_box``: it also knows the client's ``weights`` (e.g. an inference provider that shipped
  the client model).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThreatModel:
    name: str
    grants: frozenset[str]
    adversary: str  # who this is, in one line

    def admits(self, grants: frozenset[str]) -> bool:
        """Whether an attack needing ``grants`` is within this adversary's means."""
        return grants <= self.grants


_PASSIVE = frozenset({"server", "architecture", "proxy"})
THREAT_MODELS = {
    "passive": ThreatModel("passive", _PASSIVE, "the honest-but-curious training server: sees the messages, trains "
                           "the server, knows the client's architecture, holds proxy data; no queries, no weights"),
    "black_box": ThreatModel("black_box", _PASSIVE | {"query"}, "the server can also query the deployed client "
                             "(a public inference API, or a client colluding with the server)"),
    "white_box": ThreatModel("white_box", _PASSIVE | {"query", "weights"}, "the server also knows the client's weights "
                             "(e.g. an inference provider that shipped the client model)"),
}
