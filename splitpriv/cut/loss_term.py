"""Role: a term in the client's objective."""
from __future__ import annotations

import torch

from splitpriv.cut.component import CutComponent
from splitpriv.cut.context import CutContext


class ClientLossTerm(CutComponent):
    """Adds a term to the client's objective, next to the gradient the server returned."""

    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        """The term, differentiable w.r.t. the client's parameters; None to add nothing this step."""
        raise NotImplementedError
