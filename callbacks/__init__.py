"""Lightning callbacks that run the sanity checks of Adebayo et al. (NeurIPS 2018) during any fit.

- :class:`ModelRandomizationCheck`: cascading, independent or bottom-up weight randomisation
  (bottom-up after Binder et al., arXiv 2211.12486, 2022);
- :class:`DataRandomizationCheck`: the current model against a permuted-label reference model.

Both log ``sanity/<check>/<method>/<metric>`` through the trainer's loggers, on global rank 0
only, and never modify the model being trained.
"""

from callbacks.data_randomization import DataRandomizationCheck
from callbacks.model_randomization import ModelRandomizationCheck
from callbacks.sanity_callback import SanityCheckCallback

__all__ = ["DataRandomizationCheck", "ModelRandomizationCheck", "SanityCheckCallback"]
