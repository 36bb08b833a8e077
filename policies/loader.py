"""Read a policy from YAML (plus environment overrides) and turn every validation problem into plain words.

The `SLM_ROUTER__A__B` overrides are written out rather than pydantic-settings: they patch the mapping merged
from the YAML file and its `extends:` chain (which pydantic-settings' YAML source does not know) before
validation, with values read as YAML (not JSON), and a bad one is a `PolicyError` naming its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slm_router.policies.schema import Policy

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_POLICY = PRESETS_DIR / "default.yaml"
ENV_PREFIX = "SLM_ROUTER__"


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` holds one line per bad field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid policy {source}:\n{lines}")


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise PolicyError(name, [f"unknown preset {name!r}; presets: {known}"])
    return path


def load_policy(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Policy:
    """Load a policy file or preset by name (default preset when None); a file may `extends:` another;
    `SLM_ROUTER__A__B=value` overrides key a.b."""
    source = Path(path) if path is not None else DEFAULT_POLICY
    if not source.is_file() and source.suffix == "" and (PRESETS_DIR / f"{source}.yaml").is_file():
        source = preset_path(str(source))  # a preset by name: `-p privacy-strict`
    data = _read(source, seen=())
    overrides = _apply_env_overrides(data, os.environ if env is None else env, str(source))
    try:
        return policy_from_dict(data, source=str(source), base_dir=source.resolve().parent)
    except PolicyError as exc:  # say which problems an environment variable made, not the file
        problems = [_blame(problem, overrides) for problem in exc.problems]
        raise PolicyError(exc.source, problems) from None


def _read(source: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The file's mapping, laid over the preset or file named by its `extends` key, if any."""
    if not source.is_file():
        raise PolicyError(str(source), ["file not found"])
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(str(source), [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(str(source), [f"malformed YAML: {_yaml_problem(exc)}"]) from exc
    if not isinstance(data, dict):
        raise PolicyError(str(source), [f"top level must be a mapping of keys, got {type(data).__name__}"])
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise PolicyError(str(source), ["extends: a preset name (e.g. default) or a policy file path"])
    base_path = _parent_path(parent, source.resolve().parent)
    if base_path in seen:
        raise PolicyError(str(source), [f"extends: {parent!r} extends itself (a cycle)"])
    base = _absolute_examples(_read(base_path, (*seen, base_path)), base_path.parent)
    return _merge(base, data)


def _parent_path(parent: str, here: Path) -> Path:
    if parent.endswith((".yaml", ".yml")):
        candidate = Path(parent).expanduser()
        return (candidate if candidate.is_absolute() else here / candidate).resolve()
    return preset_path(parent).resolve()


def _absolute_examples(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Example files of an extended policy resolve against its own folder, not the extending file's."""
    for route in (data.get("routes") or {}).values():
        if isinstance(route, dict) and route.get("examples"):
            examples = route["examples"]
            route["examples"] = [
                str((base_dir / e).resolve()) for e in ([examples] if isinstance(examples, str) else examples)
            ]
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in `over` replaces what `base` had."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def policy_from_dict(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> Policy:
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, [_describe(err) for err in exc.errors()]) from None
    policy.base_dir = base_dir
    return policy


def _describe(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (check the spelling; see policies/presets/default.yaml)"
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{where}: {message}{shown}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def _apply_env_overrides(data: dict[str, Any], env: Mapping[str, str], source: str) -> dict[str, str]:
    """Apply `SLM_ROUTER__A__B=value` (the value read as YAML); returns each dotted key set and its
    variable, so a problem it causes names the variable."""
    overrides: dict[str, str] = {}
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            raise PolicyError(source, [f"{key}: names no policy key (use {ENV_PREFIX}SECTION__KEY)"])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PolicyError(source, [f"{key}: not a YAML value: {_yaml_problem(exc)}"]) from None
        node = data
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(path[: depth + 1])
                raise PolicyError(source, [f"{key}: {where} is a value, not a section with keys"])
        node[path[-1]] = value
        overrides[".".join(path)] = key
    return overrides


def _blame(problem: str, overrides: dict[str, str]) -> str:
    where = problem.split(":", 1)[0]
    variable = overrides.get(where)
    return f"{problem} (set by {variable})" if variable else problem
