"""Model definitions owned by deeprebirth (no torchvision dependency)."""

from deeprebirth.models.bvlc_googlenet import (
    INCEPTION_CONFIG,
    BVLCGoogLeNet,
    Inception,
    bvlc_googlenet,
)
from deeprebirth.models.recipe import get_recipe, rebuild, register_model, set_recipe
from deeprebirth.models.registry import available_models, build_model

__all__ = ["INCEPTION_CONFIG", "BVLCGoogLeNet", "Inception", "bvlc_googlenet"]
__all__ += ["available_models", "build_model", "get_recipe", "rebuild", "register_model"]
__all__ += ["set_recipe"]
