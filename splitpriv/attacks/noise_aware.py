"""The adaptive attacker that knows the defense: decoder inversion trained on fresh noise.

Against a randomised defense (e.g. clipped DP noise on the message), a decoder fitted to one
recorded noisy query per proxy image learns that draw of the noise. The noise-aware attacker
queries the deployed client anew every epoch, so each proxy image is seen under many noise
draws and the decoder learns E[x | message] under the defense's noise distribution. Against a
deterministic defense every query is identical and this equals ``decoder_inversion``.
"""
from __future__ import annotations

from splitpriv.attacks.base import register_attack
from splitpriv.attacks.decoder_inversion import DecoderInversion


@register_attack
class NoiseAwareInversion(DecoderInversion):
    name = "noise_aware"
    fresh_queries = True
