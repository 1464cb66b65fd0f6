"""`rlgen.generative`: pure losses and samplers of the generative model families.

Autoregressive models: `sequence_cross_entropy` (teacher forcing with label smoothing) and
`scheduled_sampling_inputs` (Bengio et al. 2015).
"""

from rlgen.generative.autoregressive import scheduled_sampling_inputs, sequence_cross_entropy

__all__ = ["scheduled_sampling_inputs", "sequence_cross_entropy"]
