"""Model families, one folder each, found by name through :mod:`.registry`.

* :mod:`.ear_fader` -- EAR + FADeR: masked mosaic reconstruction (U-Net), MSGMS map
* :mod:`.crad`      -- CRAD: continuous learnable grids as a memory of normal CNN features
* :mod:`.efficientad` -- EfficientAD (+ DFSC): student-teacher and autoencoder on a small patch network
* :mod:`.backbones` -- frozen pretrained timm networks the families share

``DEFAULT_MODEL`` is what ``train`` and the local stack's first model use (retraining continues the
active model's family): the family the benchmark table supports (README, "Which model family").
"""

from . import crad, ear_fader, efficientad  # noqa: F401 - importing registers the families
from .registry import CommonSettings, families, family_of, get_family, model_names, resolve_model

DEFAULT_MODEL = "crad"

__all__ = ["DEFAULT_MODEL", "CommonSettings", "families", "family_of", "get_family", "model_names", "resolve_model"]
