"""``LINEWATCH_RETRAIN_*``: what a run trains on, how, and what a candidate must not lose."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrainSettings(BaseSettings):
    """``LINEWATCH_RETRAIN_*``."""

    model_config = SettingsConfigDict(env_prefix="LINEWATCH_RETRAIN_", extra="ignore",
                                      populate_by_name=True)

    min_images: int = Field(32, ge=2, description="refuse to train on fewer (after de-duplication)")
    min_holdout: int = Field(4, ge=1, description="held-out normal images needed to compare the models")
    max_images: int = Field(2000, ge=2, description="newest images used at most")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of sampled normals held out")
    low_score_ratio: float = Field(0.8, gt=0.0, le=1.0,
                                   description="a sampled normal is used only if score <= ratio x threshold")
    dedup_max_distance: int = Field(10, ge=0, le=64, description="pHash bits: at most this far = maybe duplicate")
    dedup_max_diff: float = Field(2.0, ge=0.0, description="32x32 grey thumbnails: mean |difference| at most "
                                                           "this = duplicate (grey levels 0..255)")
    # the warm start's training, in settings every model family reads its own way (detector.models.CommonSettings)
    epochs: int = Field(10, ge=1, description="passes over the captures (the active family reads it its own way)",
                        # LINEWATCH_RETRAIN_EPOCHS_EAR: its name from when EAR + FADeR was the only family
                        validation_alias=AliasChoices("LINEWATCH_RETRAIN_EPOCHS", "LINEWATCH_RETRAIN_EPOCHS_EAR"))
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-4, gt=0, description="learning rate (lower than from scratch: warm start)")
    target_far: float = Field(0.01, gt=0.0, lt=1.0, description="false-alarm rate the threshold is set for")
    margin_auroc: float = Field(0.02, ge=0.0, description="candidate AUROC may be this much lower")
    margin_far: float = Field(0.02, ge=0.0, description="candidate false-alarm rate may be this much higher")
    margin_detection: float = Field(0.05, ge=0.0, description="candidate detection rate (confirmed defects above "
                                                              "its threshold) may be this much lower")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
