"""Model factory (registered names, any timm model, any nn.Module by class path) and the Lightning classifier."""

from roar.models.factory import MODELS, build_model, list_models, register_model

__all__ = ["MODELS", "build_model", "list_models", "register_model"]
