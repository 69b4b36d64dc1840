"""Typed, frozen configs and the machinery shared by every component's config.

Presets live as YAML inside the package (``pipeline/presets/<group>/``, read with
``importlib.resources``, so an installed wheel has them); they are loaded into these
dataclasses, then command-line style overrides (``fit.steps=200``) are applied. The resolved
config is a plain dict (``config_to_dict``) with a stable digest (``config_digest``) saved with
outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

PRESETS = importlib.resources.files("pipeline") / "presets"
"""The shipped presets: ``engine/`` (stage-1 engines) and ``job/`` (one per job)."""

T = TypeVar("T")

MIN_PEV_PHOTOS = 8
"""Fewest photos the position-explained variance is estimated from (its splits halve the
photos; its jackknife leaves one out): the evaluation job refuses fewer."""


class ConfigError(ValueError):
    """A user's mistake in a preset, an override, a value or an input: the message says what
    is wrong and how to mend it, and jobs print it as one line (exit code 2), no traceback."""


def check_range(
    cfg: Any,
    section: str,
    least: Mapping[str, float],
    above: Mapping[str, float] | None = None,
    most: Mapping[str, float] | None = None,
) -> None:
    """Raise ``ConfigError`` unless each named field is >= its bound (``least``), > it
    (``above``) and <= it (``most``); ``section`` prefixes the field names in the message."""
    for name, bound in least.items():
        if not getattr(cfg, name) >= bound:
            raise ConfigError(f"{section}{name} must be >= {bound}, got {getattr(cfg, name)}")
    for name, bound in (above or {}).items():
        if not getattr(cfg, name) > bound:
            raise ConfigError(f"{section}{name} must be > {bound}, got {getattr(cfg, name)}")
    for name, bound in (most or {}).items():
        if not getattr(cfg, name) <= bound:
            raise ConfigError(f"{section}{name} must be <= {bound}, got {getattr(cfg, name)}")


def check_choices(cfg: Any, section: str) -> None:
    """Raise ``ConfigError`` unless every ``Literal``-typed field of dataclass ``cfg`` holds
    one of its choices (the check of a config built in Python; loading checks them too)."""
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        choices = literal_choices(hints[field.name])
        value = getattr(cfg, field.name)
        if choices and not _is_choice(value, choices):
            raise ConfigError(
                f"{section}{field.name} must be one of {list(choices)}, got {value!r}"
            )


def literal_choices(tp: Any) -> tuple[Any, ...]:
    """The choices of a ``Literal[...]`` type (() for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _is_choice(value: Any, choices: tuple[Any, ...]) -> bool:
    """``value`` is one of ``choices``, of the same type (True is not the choice 1)."""
    return any(value == c and type(value) is type(c) for c in choices)


class MissingInput(ConfigError, FileNotFoundError):
    """An input, output or export the config names does not exist (a user error too)."""


NEUTRAL = {"neutral": True}
"""Field metadata of a setting added after outputs existed, whose default keeps the output
values they had: at its default it is left out of digests (``digest_data``), so upgrading
re-fits nothing. The default of such a field must never change."""


def neutral_at(value: Any) -> dict[str, Any]:
    """Field metadata of a setting added after outputs existed whose *default* changes them:
    at ``value`` (the behaviour those outputs had) it is left out of digests, so their digests
    stay; at any other value, the default included, it is in them."""
    return {"neutral": True, "neutral_value": value}


@dataclass(frozen=True)
class ViewConfig:
    """How the augmented views of one image are sampled (stage 1)."""

    num_views: int = 32
    """Views per image, the full image (view 0) included."""
    scale: tuple[float, float] = (0.1, 0.5)
    """Range of a crop's area as a fraction of the image's area."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of a crop's aspect ratio (width / height), sampled log-uniformly."""
    flip_prob: float = 0.5
    """Probability that a crop is mirrored horizontally."""


@dataclass(frozen=True)
class FieldConfig:
    """The semantic field F: multi-resolution dense 2-D grids followed by an MLP."""

    num_levels: int = 16
    """Number of grid levels."""
    features_per_level: int = 8
    """Feature channels stored per grid level."""
    min_resolution: int = 16
    """Cells per side of the coarsest grid."""
    max_resolution: int = 1024
    """Cells per side of the finest grid (levels grow geometrically in between)."""
    hidden_ratio: float = 0.5
    """Width of the MLP's hidden layer as a fraction of the feature channels C."""
    grid_init_std: float = 1e-4
    """Grid values start uniform in [-std, std]."""


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of the per-image decomposition y ~ F(coord) + G[i, j] + sg(h(y))."""

    steps: int = 2000
    """Optimiser steps, both phases together."""
    tokens_per_step: int = 2048
    """Tokens sampled per image per step, from all tokens of all views."""
    phase1_fraction: float = 0.5
    """Share of the steps that fit F and G only; afterwards G is frozen and h trains."""
    coarse_fraction: float = 0.0
    """Share of the steps, from the start, during which grid levels finer than
    ``coarse_cells_per_token`` are held at zero. Until then F cannot hold each view's tokens on
    their own, so the pattern tied to the view's token grid goes to G rather than being
    memorised per view by F; afterwards every level trains. 0 = every level from the start."""
    coarse_cells_per_token: float = 8.0
    """Finest grid level trained during the coarse steps, in cells per token of the full view
    (8 on a 16 x 16 token grid: levels up to 128 cells per side)."""
    lr: float = 1e-2
    """Peak learning rate of Adam."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""
    warmup_fraction: float = 0.05
    """Share of the steps spent in linear warm-up."""
    final_lr_fraction: float = 0.05
    """Learning rate at the end of cosine decay, as a fraction of ``lr``."""
    artifact_init_std: float = 0.02
    """G starts as N(0, std^2)."""
    residual_weight: float = 0.1
    """Weight of L_res = MSE(h(y), sg(y - F - G))."""
    sparsity_weight: float = 0.02
    """Weight of L_sparse = mean |h(y)|."""
    prior_weight: float = dataclasses.field(default=0.0, metadata=NEUTRAL)
    """How strongly G is held to the dataset's artifact model: G starts at the model's pattern
    and L_prior = prior_weight * mean |G - pattern|^2 is added, in units of the data term's own
    weight on G (1: an image's correction is halved). 0: G is free, as in the method; > 0 needs
    an artifact model (``pipeline.models.artifact_model``)."""

    def __post_init__(self) -> None:
        fractions = ("phase1_fraction", "warmup_fraction", "coarse_fraction")
        check_range(
            self,
            "fit.",
            {"steps": 1, "tokens_per_step": 1, "prior_weight": 0, **dict.fromkeys(fractions, 0.0)},
            above={"coarse_cells_per_token": 0},
            most=dict.fromkeys(fractions, 1.0),
        )


@dataclass(frozen=True)
class ShiftConfig:
    """The shift decomposition (``method: shift``): views shifted by whole patches at the full
    view's own scale, split in closed form into content F and an artifact G near the dataset's
    artifact model (``pipeline.models.shift``)."""

    views: int = 10
    """Views per image, the unshifted full view included (one ViT forward each)."""
    pad: int = 2
    """Reflect padding in whole patches on each side: offsets span 0..2*pad patches."""
    flip_prob: float = 0.5
    """Probability that a shifted view is mirrored left-right."""
    prior_weight: float = 10.0
    """How strongly the image's G is held to the artifact model, in views' worth of evidence
    (0: G from this image alone, which also takes content; .inf: G is the artifact model)."""
    iterations: int = 20
    """Alternating least-squares rounds (F given G, G given F)."""

    def __post_init__(self) -> None:
        check_range(
            self,
            "shift.",
            {"views": 1, "pad": 0, "flip_prob": 0.0, "prior_weight": 0, "iterations": 1},
            most={"flip_prob": 1.0},
        )


@dataclass(frozen=True)
class HighResConfig:
    """How ``clean_hr`` is estimated when ``upsample`` > 1 (``pipeline.models.subpatch``):
    the shift views plus views shifted by fractions of a patch, each view's G held to the
    image's shift decomposition, then content at s x s cells per token from all of them."""

    views: int = 12
    """Extra views at the sub-patch phases (besides the shift views, which are phase 0)."""
    estimator: Literal["average", "solve"] = "average"
    """``average``: each fine cell is the mean over the views of the tokens whose window holds
    it, G removed (the best fine and token matching measured); ``solve``: the guided
    least-squares solve of the views' box averages (sharper: the best stereo and the lowest
    PEV, but noisier matches). docs/performance.md, "Finer than a patch", has the figures."""
    smooth: float = 1.0
    """``solve``: weight of the image-guided smoothness between neighbouring cells, in units
    of one view's evidence on a cell: it fills in what the box averages leave open (the finest
    checkerboard) the way the image's colours say."""
    sigma: float = 0.1
    """``solve``: colour distance (RGB in [0, 1]) at which a neighbour's pull falls to
    exp(-1/2)."""
    iterations: int = 200
    """``solve``: most conjugate-gradient steps."""
    tolerance: float = 1e-4
    """``solve``: it stops when every channel's residual is below this share of its data."""

    def __post_init__(self) -> None:
        check_choices(self, "hr.")
        check_range(self, "hr.", {"views": 0, "iterations": 1, "smooth": 0}, above={"sigma": 0})


@dataclass(frozen=True)
class ResizeConfig:
    """How an image becomes the model input whose token grid every output of it lives on."""

    aspect: Literal["keep", "square"] = "keep"
    """``keep``: the input keeps the image's aspect (short side at the image size, long side
    at the nearest whole token count), so a 2:1 photo gets a token grid twice as wide as high;
    ``square``: every image is squashed to a square (the layout of outputs made before this
    setting existed, and of the DVT reference)."""
    max_tokens_ratio: float = 2.0
    """Cap on a kept-aspect grid's token count, as a multiple of the square grid's; beyond it
    both sides shrink (aspect kept). Bounds memory and time on panoramas."""

    def output_settings(self) -> dict[str, Any]:
        """Its part of an output digest: nothing for ``square`` inputs (the layout of outputs
        made before this setting existed, whose digests stay; the cap plays no part), else
        the whole section."""
        if self.aspect == "square":
            return {}
        return {"resize": {"aspect": self.aspect, "max_tokens_ratio": self.max_tokens_ratio}}

    def max_tokens(self, side: int) -> float:
        """The most tokens an image's grid may hold when the square grid is ``side`` x ``side``
        (``keep``: the cap; ``square``: the square itself)."""
        return side * side * (self.max_tokens_ratio if self.aspect == "keep" else 1.0)

    def __post_init__(self) -> None:
        check_choices(self, "resize.")
        check_range(self, "resize.", {"max_tokens_ratio": 1.0})


METHOD_VERSIONS = {"field": 1, "shift": 1}
"""Bumped on purpose when a method's code changes its output values for the same settings: a
new version gives a new digest, so refreshes re-fit and readers tell old from new."""


@dataclass(frozen=True)
class EngineConfig:
    """A stage-1 preset: everything ``clean_images`` needs besides the ViT itself."""

    name: str = "custom"
    """Preset name, recorded with outputs."""
    image_size: int | None = None
    """Model input in pixels (multiple of the patch size): the side of the square input, or the
    short side where ``aspect`` keeps the image's aspect; None: 37 tokens."""
    resize: ResizeConfig = dataclasses.field(
        default_factory=ResizeConfig, metadata=neutral_at(ResizeConfig(aspect="square"))
    )
    """How each image becomes the model input (its aspect kept by default)."""
    images_per_fit: int = 8
    """Images fitted together in one batched optimisation."""
    vit_batch_size: int = 32
    """Views per ViT forward pass."""
    seed: int = 0
    """Base seed; every image's views and initialisation derive from (image id, seed)."""
    method: Literal["field", "shift"] = dataclasses.field(default="field", metadata=NEUTRAL)
    """``field``: the per-image neural-field fit of DVT (views, field, fit); ``shift``: the
    shift decomposition around a dataset-level artifact model (shift), no training."""
    views: ViewConfig = dataclasses.field(default_factory=ViewConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    shift: ShiftConfig = dataclasses.field(default_factory=ShiftConfig)
    upsample: Literal[1, 2, 4] = dataclasses.field(default=1, metadata=NEUTRAL)
    """Cells per token side of ``clean_hr``, the artifact-free content finer than a patch
    (1: none, 2 or 4: an (s*h, s*w, C) map beside ``clean``); needs ``method: shift``."""
    hr: HighResConfig = dataclasses.field(default_factory=HighResConfig, metadata=NEUTRAL)
    """How ``clean_hr`` is estimated."""

    def __post_init__(self) -> None:
        check_choices(self, "")
        if self.upsample > 1 and self.method != "shift":
            raise ConfigError(
                "upsample > 1 needs method: shift (the sub-patch views are shifted "
                "views of the full image); use preset=shift"
            )

    def output_settings(self) -> dict[str, Any]:
        """What decides the output values, for digests: the method, its version (when bumped
        past 1), the input size and resize, the seed and the method's own sections. Batch sizes
        and the preset's name are left out (they change how fast, not what)."""
        sections = ("views", "field", "fit") if self.method == "field" else ("shift",)
        data = digest_data(self)
        keep = {k: data[k] for k in ("method", "image_size", "seed", *sections) if k in data}
        keep |= self.resize.output_settings()
        if self.upsample > 1:  # clean_hr is part of the output, and how it is made
            keep |= {"upsample": self.upsample, "hr": config_to_dict(self.hr)}
        if METHOD_VERSIONS[self.method] != 1:
            keep["method_version"] = METHOD_VERSIONS[self.method]
        return keep

    @property
    def needs_artifact_model(self) -> bool:
        """Whether cleaning with this preset needs the dataset's artifact model."""
        return self.method == "shift" or self.fit.prior_weight > 0


# --------------------------------------------------------------------------- machinery


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command line) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if choices := literal_choices(tp):
        if not _is_choice(value, choices):
            raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is list:
        if isinstance(value, str):  # one item given where a list is expected (include=*.jpg)
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, where) for v in value]
    if origin is dict or tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(unknown)} in {where or cls.__name__}; "
            f"valid: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:  # the config's own checks: say where in a nested config
        if where and not str(err).startswith(where):
            raise ConfigError(f"{where}: {err}") from err
        raise
    except (TypeError, ValueError) as err:  # a value the config's own checks refuse
        raise ConfigError(f"{where + ': ' if where else ''}{err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config (a dataclass, or plain data) as JSON-able data (tuples become lists)."""
    is_instance = dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
    data = dataclasses.asdict(cfg) if is_instance else cfg
    return json.loads(json.dumps(data))


SECRET_KEY = re.compile(
    r"(^|[_\-.])(key|secret|token|password|passwd|pwd|credentials?|auth|authorization|"
    r"connection_?string|conn_?str|signature|sig|cookie)([_\-.]|$)",
    re.IGNORECASE,
)
"""Keys whose values are credentials: ``aws_secret_access_key``, ``sas_token``,
``Authorization`` (a header), ``connection_string``, ``X-Api-Key`` ..."""
URL_USERINFO = re.compile(
    r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@:]+:[^/\s@]*@"
    r"|\b(https?://|ftps?://)[^/\s@:]+@"
)
"""``scheme://user:password@host`` and ``https://token@host`` inside any string (not
``abfs://container@account...``, whose user part names a container)."""
SECRET_FIELD = re.compile(
    r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd|sig|"
    r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|access_token|token)=([^;&\s]+)"
)
"""Secrets inside connection strings (Azure ``AccountKey=...;``) and signed URLs' queries."""
REDACTED = "***"


def redact_text(text: str) -> str:
    """``text`` with the credentials it may carry replaced: the user info of URLs and the
    secret fields of connection strings and query strings."""
    text = URL_USERINFO.sub(lambda m: f"{m.group(1) or m.group(2)}{REDACTED}@", text)
    return SECRET_FIELD.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def redact(data: Any) -> Any:
    """A copy of JSON-able ``data`` with every value under a secret-looking key replaced, and
    credentials inside strings (URLs with a user and password, connection strings, signed
    query strings) masked.

    Configs are saved with each output and may carry fsspec ``storage_options``; credentials
    belong in the environment, but if a user passes them anyway they are never written out.
    """
    if isinstance(data, dict):
        return {
            k: REDACTED
            if isinstance(k, str) and SECRET_KEY.search(k) and v not in (None, "")
            else redact(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return redact_text(data)
    return data


def drop_redacted(data: Any) -> Any:
    """A saved config made usable again: redacted entries removed (the environment supplies
    credentials instead)."""
    if isinstance(data, dict):
        return {k: drop_redacted(v) for k, v in data.items() if v != REDACTED}
    if isinstance(data, list):
        return [drop_redacted(v) for v in data]
    return data


def digest_data(cfg: Any) -> Any:
    """A config as JSON-able data for digests: fields marked ``NEUTRAL`` left out while at
    their default (``neutral_at(value)``: while at that value)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("neutral") and value == f.metadata.get(
                "neutral_value", _field_default(f)
            ):
                continue
            out[f.name] = digest_data(value)
        return out
    if isinstance(cfg, list | tuple):
        return [digest_data(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: digest_data(v) for k, v in cfg.items()}
    return cfg


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_digest(cfg: Any, exclude: Iterable[str] = ()) -> str:
    """Short sha256 of the canonical JSON of a config (``digest_data``: neutral fields at their
    default left out), top-level keys in ``exclude`` left out."""
    data = json.loads(json.dumps(digest_data(cfg)))
    for key in exclude:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_digest(
    model: str, weights_digest: str, settings: Mapping[str, Any], dtype: str, with_artifact: bool
) -> str:
    """The config digest of a feature run: everything that decides its rows' values (the
    ViT, its weights, the method's settings, the stored dtype and columns)."""
    return config_digest(
        {
            "model": model,
            "weights_digest": weights_digest,
            **settings,
            "dtype": dtype,
            "with_artifact": with_artifact,
        }
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    return path, parse_value(raw, text)


def parse_value(raw: str, where: str = "") -> Any:
    """A value typed on a command line, read as YAML (``3``, ``true``, ``{a: 1}``, ``[x, y]``).

    Glob patterns are not YAML (``*`` starts an alias), so ``[*.jpg,*.png]`` and ``*.jpg`` read
    as a list of strings and a string; any other unreadable value is a ``ConfigError``.
    """
    text = raw.strip()
    if not text:
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        if text.startswith("[") and text.endswith("]"):
            items = (item.strip() for item in text[1:-1].split(","))
            return [_unquote(item) for item in items if item]
        if "," not in text and not text.startswith(("{", "[", "'", '"')):
            return text  # a bare pattern such as *.jpg
        problem = str(err).splitlines()[0]
        raise ConfigError(
            f"override {where or raw!r}: the value is not valid YAML ({problem}); "
            "quote it, e.g. key='[a, b]'"
        ) from None


def _unquote(text: str) -> str:
    """``'a'`` or ``"a"`` -> ``a``; anything else as it is."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Return ``cfg`` with each ``key.sub=value`` override applied (type-checked)."""
    data = config_to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a config section")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"override {text!r}: unknown key {path[-1]!r}; valid: {sorted(node)}")
        node[path[-1]] = value
    return from_dict(type(cfg), data)


def load_yaml_config(cls: type[T], path: Path | str | Traversable) -> T:
    """Load a YAML file into dataclass ``cls`` (missing keys keep their defaults)."""
    source = path if isinstance(path, Traversable) else Path(path)
    data = yaml.safe_load(source.read_text()) or {}
    return from_dict(cls, data, where=str(path))


def preset_path(name_or_path: str | Path, group: str) -> Path | Traversable:
    """The shipped preset ``<group>/<name>.yaml``, or a YAML file given by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"no preset file {name_or_path}")
        return path
    shipped = PRESETS / group / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(
            f"no {group} preset {name_or_path!r}; known presets: "
            f"{preset_names(group)} (or a YAML path)"
        )
    return shipped


def preset_names(group: str) -> list[str]:
    """Names of the shipped presets of ``group`` (``engine`` or ``job``)."""
    return sorted(p.name[:-5] for p in (PRESETS / group).iterdir() if p.name.endswith(".yaml"))


def load_preset(cls: type[T], name_or_path: str | Path, group: str) -> T:
    """Load the shipped preset ``<group>/<name>.yaml``, or a YAML file given by path."""
    return load_yaml_config(cls, preset_path(name_or_path, group))


def engine_preset(preset: str | Path | EngineConfig, overrides: Iterable[str] = ()) -> EngineConfig:
    """Resolve a stage-1 preset name, YAML path or config object, then apply overrides."""
    if isinstance(preset, EngineConfig):
        return apply_overrides(preset, overrides)
    cfg = load_preset(EngineConfig, preset, "engine")
    return apply_overrides(cfg, overrides)
