"""Load a run configuration: YAML file + ``key=value`` overrides + plugin imports, with located errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rlfold.core.config import RunConfig, LocatedValueError
from rlfold.core.errors import ConfigError, dotted
from rlfold.core.suggest import closest


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's YAML 1.1 rules need ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    """A YAML mapping whose keys are unique: a repeated key would silently override the first."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]}, again at line {line})",
                key_node.start_mark)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: _mapping_without_duplicates(loader, node, deep=True))


def _duplicate_key_path(text: str) -> str | None:
    """Dotted path (``train.lr``) of the first key repeated within one YAML mapping, if any."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None

    def walk(node: Any, path: tuple[Any, ...]) -> str | None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in node.value:
                if k.value in seen:
                    return _dotted((*path, str(k.value)))
                seen.add(k.value)
                found = walk(v, (*path, str(k.value)))
                if found:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                found = walk(v, (*path, i))
                if found:
                    return found
        return None

    return walk(root, ())


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the model that contains location ``loc``."""
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or [])]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("rewards", 0, "name")`` -> ``rewards[0].name``; ``<root>`` for the document itself."""
    return dotted(loc) or "<root>"


def _key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Line number (1-based) of every key and list item of a YAML document, by location."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*path, str(k.value))] = k.start_mark.line + 1
                walk(v, (*path, str(k.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    walk(root, ())
    return lines


def _origin(loc: tuple[Any, ...], origins: dict[tuple[Any, ...], str], source: str,
            lines: dict[tuple[Any, ...], int]) -> str:
    """Where the value at ``loc`` came from: the override that set it, or the file and line."""
    key = tuple(map(str, loc))
    best: tuple[int, str] | None = None
    for path, item in origins.items():
        spath = tuple(map(str, path))
        n = min(len(spath), len(key))
        if n and spath[:n] == key[:n] and (best is None or len(spath) >= best[0]):
            best = (len(spath), item)
    if best is not None:
        return f"override {best[1]!r}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]}"
    return ""


def _format_errors(exc: ValidationError, source: str, origins: dict[tuple[Any, ...], str] | None = None,
                   lines: dict[tuple[Any, ...], int] | None = None) -> str:
    out = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedValueError):
            loc, msg = cause.loc, str(cause)
        elif err["type"] == "extra_forbidden":
            close = closest(str(loc[-1]), _fields_at(loc))
            msg = f"unknown key; did you mean {_dotted((*loc[:-1], close))!r}?" if close else "unknown key"
            if not close and _fields_at(loc):
                msg += f" (valid keys here: {', '.join(_fields_at(loc))})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] != "value_error":
                msg += f" (got {err.get('input')!r})"
        where = _origin(loc, origins or {}, source, lines or {})
        out.append(f"  {_dotted(loc)}{f' ({where})' if where else ''}: {msg}")
    return "\n".join(out)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = re.sub(r"\[(\d+)\]", r".\1", key.strip())  # rewards[0].weight == rewards.0.weight
    if not key or any(not k for k in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key (expected key=value, e.g. train.lr=1e-4)")
    try:
        value = _yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({problem})") from None
    return key.split("."), value


def _list_index(node: list[Any], k: str, item: str, where: str) -> int:
    if not k.isdigit():
        raise ConfigError(f"override {item!r}: {where} is a list; index it by position, e.g. {where}.0")
    if int(k) >= len(node):
        raise ConfigError(f"override {item!r}: {where} has {len(node)} item(s), so there is no index {k}")
    return int(k)


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    origins: dict[tuple[Any, ...], str] | None = None) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sub-dicts; ``rewards.0.weight`` indexes a list);
    validation happens afterwards. ``origins`` receives each set location and the override that set it."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        path: list[Any] = []
        for k in keys[:-1]:
            if isinstance(node, list):
                k = _list_index(node, k, item, _dotted(tuple(path)))
                child = node[k]
            else:
                child = node.get(k)
                if child is None:
                    child = node[k] = {}
            path.append(k)
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {item!r}: {_dotted(tuple(path))} is a value ({child!r}), not a section")
            node = child
        last: Any = keys[-1]
        if isinstance(node, list):
            last = _list_index(node, last, item, _dotted(tuple(path)))
        node[last] = value
        if origins is not None:
            origins[(*path, last)] = item
    return data


def import_plugins(items: list[Any]) -> None:
    """Import user modules (dotted names or ``.py`` paths) whose import registers custom parts."""
    import importlib
    import importlib.util
    import sys

    if not isinstance(items, list):
        raise ConfigError(f"imports: expected a list of modules or .py files, got {items!r}")
    for item in items:
        item = str(item)
        try:
            if item.endswith(".py"):
                path = Path(item).resolve()
                if not path.is_file():
                    raise ConfigError(f"imports: file {item} does not exist")
                name = f"rlfold_plugin_{path.stem}"
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise ConfigError(f"imports: importing {item!r} failed: {type(exc).__name__}: {exc}") from exc


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe, apply overrides and validate; every problem is reported with its key."""
    data: dict[str, Any] = {}
    source = "defaults"
    lines: dict[tuple[Any, ...], int] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            loaded = _yaml_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
            problem = getattr(exc, "problem", None) or str(exc)
            dup = _duplicate_key_path(text) if "duplicate key" in problem else None
            if dup:
                raise ConfigError(f"{where}: {dup} is set twice ({problem}); keep one") from None
            raise ConfigError(f"{where}: config file is not valid YAML ({problem})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p}: the top level must be a mapping of keys (train:, model:, ...), "
                f"got a {type(loaded).__name__}"
            )
        data = loaded or {}
        data.pop("description", None)
        data.pop("paper", None)
        source = str(p)
        lines = _key_lines(text)
    origins: dict[tuple[Any, ...], str] = {}
    data = apply_overrides(data, overrides or [], origins)
    import_plugins(data.get("imports") or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, origins, lines)) from None
