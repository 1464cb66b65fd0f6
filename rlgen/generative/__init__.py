"""`rlgen.generative`: pure losses and samplers of the generative model families.

Autoregressive models (`rlgen.generative.autoregressive`): `next_token_loss` (teacher
forcing with label smoothing and scheduled sampling, configured by
`AutoregressiveConfig`), built from `sequence_cross_entropy` and
`scheduled_sampling_inputs` (Bengio et al. 2015).
"""

from rlgen.generative.autoregressive import (
    AutoregressiveConfig,
    next_token_loss,
    scheduled_sampling_inputs,
    sequence_cross_entropy,
)

__all__ = [
    "AutoregressiveConfig",
    "next_token_loss",
    "scheduled_sampling_inputs",
    "sequence_cross_entropy",
]
