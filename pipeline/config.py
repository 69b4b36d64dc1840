"""The machinery every typed, frozen config shares: its errors and checks, loading from YAML
and mappings, ``key.sub=value`` overrides, digests, and redacting secrets.

Presets live as YAML inside the package (``pipeline/presets/<group>/``, read with
``importlib.resources``, so an installed wheel has them); they are loaded into the config
dataclasses (``pipeline.engine_config``, ``pipeline.job_config``), then command-line style
overrides (``fit.steps=200``) are applied. The resolved config is a plain dict
(``config_to_dict``) with a stable digest (``config_digest``) saved with outputs.
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
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

PRESETS = importlib.resources.files("pipeline") / "presets"
"""The shipped presets: ``engine/`` (stage-1 engines) and ``job/`` (one per job)."""

T = TypeVar("T")


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
