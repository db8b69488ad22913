"""Semantic leakage: do the reconstructions reveal the private label?

The attacker trains a classifier on its own labelled proxy data (early stopping on a held-out
slice) and applies it to the reconstructions; its accuracy against the private test labels is
the semantic leakage. Its accuracy on the original private images is the ceiling to compare with.
Only meaningful when the proxy's labels are the private data set's classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from splitpriv.attacks.base import EarlyStopping, ProxyData, fit_with_early_stopping, holdout_split
from splitpriv.models import build_model

CLASSIFIER_MODEL = "small_cnn"  # a plain CNN: the attacker's own model, independent of the victim's


def fit_proxy_classifier(proxy: ProxyData, num_classes: int, seed: int = 0, max_epochs: int = 100) -> torch.nn.Module:
    """The attacker's classifier, trained on the proxy images (model inputs) and labels."""
    stopping = EarlyStopping(max_epochs=max_epochs, patience=5, lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, channels, size, _ = proxy.inputs.shape
    classifier = build_model(CLASSIFIER_MODEL, num_classes, channels, size).to(proxy.inputs.device)
    train_idx, holdout_idx = holdout_split(len(proxy.inputs), stopping.holdout_fraction, generator)
    fit_with_early_stopping(classifier, F.cross_entropy, proxy.inputs[train_idx], proxy.labels[train_idx],
                            proxy.inputs[holdout_idx], proxy.labels[holdout_idx], stopping, generator)
    return classifier


@torch.no_grad()
def classifier_accuracy(classifier: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Top-1 accuracy of ``classifier`` on model ``inputs`` (normalise reconstructions first), on the
    classifier's device."""
    classifier.eval()
    device = next(classifier.parameters()).device
    logits = torch.cat([classifier(chunk.to(device)).cpu() for chunk in inputs.split(1024)])
    return float(multiclass_accuracy(logits, labels.cpu(), num_classes=num_classes, average="micro"))
