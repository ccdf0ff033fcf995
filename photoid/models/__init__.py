"""Models: a timm backbone as a plain classifier, DOLG on top of it, and the ArcFace head.

``create_model(config)`` builds any of them from the config dict saved beside its weights.
"""

from photoid.models.factory import create_model, load_model, save_model

__all__ = ["create_model", "load_model", "save_model"]
