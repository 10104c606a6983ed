"""Model families, found by name (as timm finds architectures).

A family lives in ``detector/models/<family>/`` and registers one :class:`ModelFamily` subclass
with :func:`register_family`.  Everything else in ``detector/`` (data, calibration, metrics, the
checkpoint envelope, :class:`detector.inference.Detector`, the service, the benchmark, the CLI)
talks to a family only through this interface, so a new family needs no change outside its folder
(and one import line in :mod:`detector.models`).

The family's network is a plain ``nn.Module`` (the *export contract*)::

    module.cfg          the family's architecture config (a dataclass with to_dict()/from_dict())
    module.image_size   side of the square input, in pixels
    module(images)      images: uint8 [B,3,S,S] RGB (float in [0,1] also accepted)
                        -> (scores float32 [B], maps float32 [B,1,S,S])

Pre- and post-processing travel inside ``forward`` (normalisation, feature extraction, map
upsampling and smoothing, the image score), so the exported graph and ``Detector`` give the same
numbers.  Higher means more anomalous.  Frozen pretrained parts (backbones, maskers) are part of
the module's state and travel in the checkpoint: loading never needs the original weights file.
"""

from __future__ import annotations

import argparse
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn


@dataclass
class TrainingSet:
    """Normal images to train on, at the family's input size, plus held-out normals.

    ``val`` is never trained on: the threshold is calibrated on it (and a family may use it for
    its own choices, e.g. EAR's mosaic selection or EfficientAD's map normalisation).
    """

    train: torch.Tensor  # uint8 [N,3,S,S]
    val: torch.Tensor  # uint8 [V,3,S,S]
    train_products: list[str]  # product of each training image (several only in a unified model)
    val_products: list[str]
    fingerprint: str = ""  # sha256 over the training data
    skipped: list[str] = field(default_factory=list)  # corrupt files that were left out

    @property
    def products(self) -> list[str]:
        return list(dict.fromkeys(self.train_products + self.val_products))


@dataclass
class FitResult:
    model: nn.Module
    minutes: dict[str, float]  # wall-clock minutes per training stage
    meta: dict[str, Any] = field(default_factory=dict)  # family facts worth keeping in the checkpoint


@dataclass(frozen=True)
class CommonSettings:
    """Training settings every family understands, for callers that do not know the family (retraining
    warm-starts whatever family is active).  Each family maps them onto its own fields
    (:meth:`ModelFamily.common_overrides`); None leaves the profile's value."""

    epochs: int | None = None  # passes over the training images (a family with stages says how they share them)
    batch_size: int | None = None
    lr: float | None = None  # learning rate of what trains (a family with several says how they follow it)


@dataclass(frozen=True)
class Profile:
    """Default settings for a kind of machine: config and train-config field overrides."""

    cost: str  # what it costs, for --help, e.g. "256 px, ~10 min per category on 2 CPU cores"
    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    """One model family: its configs, how to build its module, how to train it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help
    config_cls: ClassVar[type]  # architecture (stored in the checkpoint; rebuilds the module)
    train_config_cls: ClassVar[type]  # training hyper-parameters (stored in the checkpoint's meta)
    # "cpu" and "gpu": the settings for that machine; "smoke": seconds on a CPU, painted toy defects only
    # (installation checks such as ``gpu-check --dry-run``, and the tests)
    profiles: ClassVar[dict[str, Profile]]
    # named option sets, benchmarked and trainable by name (``--model NAME``); the first is the default
    variants: ClassVar[dict[str, dict[str, Any]]]
    unified: ClassVar[bool] = False  # one model can serve several products

    # ---- construction
    @abstractmethod
    def build(self, cfg: Any) -> nn.Module:
        """The module for ``cfg``.  Pretrained parts are read from local files named in ``cfg``
        (or left random when the weights come from a checkpoint next)."""

    def for_loading(self, cfg: Any) -> Any:
        """The config to build a module whose weights then come from a checkpoint (no weights files)."""
        return cfg

    def verify(self, model: nn.Module, meta: dict[str, Any]) -> None:
        """Extra identity checks after a checkpoint loaded (raise ValueError with one line)."""

    # ---- configuration
    def configs(self, variant: str | None = None, profile: str = "cpu",
                overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """(config, train config) for a variant on a profile; ``overrides`` name fields of either."""
        variant = variant or next(iter(self.variants))
        if variant not in self.variants:
            raise ValueError(f"{self.name} has no variant {variant!r} (choose from {', '.join(self.variants)})")
        if profile not in self.profiles:
            raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(self.profiles)})")
        prof = self.profiles[profile]
        values = {**prof.config, **prof.train, **self.variants[variant], **(overrides or {})}
        cfg_fields = {f.name for f in dataclasses.fields(self.config_cls)}
        tc_fields = {f.name for f in dataclasses.fields(self.train_config_cls)}
        unknown = set(values) - cfg_fields - tc_fields
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)}")
        cfg = self.make_config({k: v for k, v in values.items() if k in cfg_fields})
        tc = self.train_config_cls(**{k: v for k, v in values.items() if k in tc_fields and k not in cfg_fields})
        return cfg, tc

    def make_config(self, values: dict[str, Any]) -> Any:
        return self.config_cls(**values)

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Family-specific ``train`` options.  Every default must be None (None = the profile's)."""

    def overrides_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The options the user gave (not None), as config/train-config field values."""
        return {}

    def common_overrides(self, common: CommonSettings) -> dict[str, Any]:
        """``common`` as this family's config / train-config fields.  By default each setting goes to the
        train-config field of the same name, when the family has one."""
        fields = {f.name for f in dataclasses.fields(self.train_config_cls)}
        return {k: v for k, v in dataclasses.asdict(common).items() if v is not None and k in fields}

    def variant_of(self, cfg: Any) -> str:
        """The variant name that describes a trained config (for tables and the dashboard)."""
        return next(iter(self.variants))

    # ---- training
    @abstractmethod
    def fit(self, cfg: Any, tc: Any, data: TrainingSet, device: torch.device, *, seed: int = 0,
            progress: bool = True, init: nn.Module | None = None,
            workspace: dict[str, Any] | None = None) -> FitResult:
        """Train on ``data`` (normal images only), reproducibly for a ``seed``.

        ``init``: a trained module of this family to continue from (warm start, nightly retraining);
        ``cfg`` is then ``init.cfg``.  ``workspace``: a dict shared by the variants of this family
        trained on the same data in one benchmark run, for work they have in common (e.g. EAR's
        stage 1 under every FADeR variant); None outside benchmarks.
        """


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make a family available by its ``name`` (and its variants by theirs)."""
    fam = cls()
    taken = {v: f.name for f in _FAMILIES.values() for v in f.variants} | {f: f for f in _FAMILIES}
    for n in [fam.name, *fam.variants]:
        if n in taken and taken[n] != fam.name:
            raise ValueError(f"model name {n!r} of family {fam.name} is already used by {taken[n]}")
    _FAMILIES[fam.name] = fam
    return cls


def get_family(name: str) -> ModelFamily:
    _load_builtin()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r} (choose from {', '.join(sorted(_FAMILIES))})") from None


def families() -> list[ModelFamily]:
    _load_builtin()
    return list(_FAMILIES.values())


def family_of(cfg: Any) -> ModelFamily:
    """The family whose config class ``cfg`` is."""
    _load_builtin()
    for fam in _FAMILIES.values():
        if isinstance(cfg, fam.config_cls):
            return fam
    raise ValueError(f"{type(cfg).__name__} is no registered family's config")


def resolve_model(name: str) -> tuple[ModelFamily, str]:
    """A family name or a variant name -> (family, variant).  ``crad`` -> (CRAD, its default)."""
    _load_builtin()
    if name in _FAMILIES:
        fam = _FAMILIES[name]
        return fam, next(iter(fam.variants))
    for fam in _FAMILIES.values():
        if name in fam.variants:
            return fam, name
    names = [n for f in _FAMILIES.values() for n in (f.name, *f.variants)]
    raise ValueError(f"unknown model {name!r} (choose from {', '.join(dict.fromkeys(names))})")


def model_names() -> list[str]:
    """Every name ``--model`` accepts: families, then each family's variants."""
    _load_builtin()
    return list(dict.fromkeys([f.name for f in _FAMILIES.values()]
                              + [v for f in _FAMILIES.values() for v in f.variants]))


def _load_builtin() -> None:
    import detector.models  # noqa: F401 - importing the package registers the built-in families
