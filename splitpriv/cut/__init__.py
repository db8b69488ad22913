"""The cut pipeline by role: what happens between the client's last layer and the network.

Each role is one small interface; a component plays one or several of them:

* :class:`MessageTransform` maps the message before it is sent (noise, a compression); it knows its
  wire size, its deterministic part and its noise (``transform.py``);
* :class:`ClientLossTerm` adds a differentiable term to the client's objective (``loss_term.py``);
* :class:`TrainablePart` owns parameters trained with their own optimizer after the client's step,
  e.g. a simulated attacker or a bottleneck's codec (``trainable_part.py``);
* :class:`TrainingPrivatizer` changes how the client trains: its loader and optimizer, e.g. DP-SGD
  (``privatizer.py``).

All share :class:`CutComponent`'s lifecycle (``build``, ``setup``, ``resumed``, ``metrics``,
``config``). Privacy defenses (``splitpriv.defenses``) and compressions (``splitpriv.transforms``)
are registered components; the training step asks each component only for the roles it plays.
"""
from splitpriv.cut.component import CutComponent, StepMean, is_number
from splitpriv.cut.context import CutContext
from splitpriv.cut.loss_term import ClientLossTerm
from splitpriv.cut.noise import NoiseModel, private_generator
from splitpriv.cut.privatizer import TrainingPrivatizer
from splitpriv.cut.trainable_part import TrainablePart
from splitpriv.cut.transform import MessageTransform

__all__ = ["CutComponent", "CutContext", "ClientLossTerm", "MessageTransform", "NoiseModel", "StepMean",
           "TrainablePart", "TrainingPrivatizer", "is_number", "private_generator"]
