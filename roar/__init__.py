"""roar: is your saliency method faithful?

ROAR/KAR (Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks",
NeurIPS 2019) and the sanity checks of Adebayo et al. ("Sanity Checks for Saliency Maps",
NeurIPS 2018), built on PyTorch Lightning and captum.
"""

__version__ = "0.3.1"
