"""Model factory and the Lightning classifier."""

from roar.models.factory import build_model, list_models

__all__ = ["build_model", "list_models"]
