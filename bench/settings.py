"""Settings: the preset a command runs under, as the user named it and changed it.

A named preset (built in, registered by a plugin's `bench_register_presets`, or a TOML file given
as `--preset FILE.toml`), then `--teacher`, `--student`, `--student-layers` and `--set FIELD=VALUE`
on top. Changes apply after the suite's own overrides (`Preset.suite_overrides`), so what the user
sets is what runs on every suite. A preset changed from its name is a setting of its own, named
`<name>[<changes>]-<fingerprint>`: its runs are stored and reported apart from the named preset's
and never averaged with them. The fingerprint hashes the base preset and the changes, not the suite,
so one setting keeps one name across suites (the summary table's columns).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, unknown_name
from bench.models.classifier import ModelSpec
from bench.presets import DEFAULT_PRESET, PRESETS, Preset

# What a change may not touch: the name is the setting's, and changes already apply after the
# suite's overrides (a file may still give per-suite changes, as `[suite_overrides.<suite>]`).
UNSETTABLE = ("name", "description", "source", "suite_overrides")
MODEL_CHANGES = ("teacher", "student", "student-layers")  # --teacher, --student, --student-layers
LONG_LABEL = 60  # characters of changes spelt out in a setting's name; beyond, only their count


@dataclasses.dataclass(frozen=True)
class PresetFile:
    """A TOML preset: its base preset's name and the changes it makes, everywhere and per suite."""

    path: Path
    name: str
    description: str
    base: str
    changes: dict[str, Any]
    suite_changes: dict[str, dict[str, Any]]
    lines: dict[str, int]  # each dotted key's line in the file, for errors

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}: {key}" if line else f"{self.path}: {key}"


def is_preset_file(name: str) -> bool:
    return name.endswith(".toml")


def read_preset_file(path: str | Path) -> PresetFile:
    """`base = "cpu"`, optional `name` and `description`, then the fields it changes: top-level keys
    (`max_len = 64`), tables (`[student_train]` with `epochs = 10`) and per-suite tables
    (`[suite_overrides.mnli.student_train]`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read the preset file {path} ({exc.strerror or exc})",
                         "give the path of a TOML preset file, or a preset's name (`python -m bench ls presets`)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: bytes that are not UTF-8 at byte {exc.start}", "save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise BenchError(f"{where}: not valid TOML ({exc})",
                         "fix the syntax (https://toml.io); e.g. base = \"cpu\" then [student_train] epochs = 10") \
            from None
    base = data.pop("base", None)
    if not isinstance(base, str):
        raise BenchError(f"{path}: no base preset (base = \"cpu\" on a line of its own, before any table)",
                         "name the preset this file changes; `python -m bench ls presets` lists them")
    name = data.pop("name", path.stem)
    description = data.pop("description", f"{base} as changed by {path.name}")
    suite_changes = {suite: _flatten(table, path) for suite, table in data.pop("suite_overrides", {}).items()}
    return PresetFile(path, str(name), str(description), base, _flatten(data, path), suite_changes,
                      _key_lines(raw.decode("utf-8")))


def _key_lines(text: str) -> dict[str, int]:
    """The line of each `key = value` as a dotted key under its `[table]` (tomllib keeps no positions)."""
    lines, table = {}, ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if header := re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", stripped):
            table = re.sub(r"\s*\.\s*", ".", header.group(1)) + "."
        elif key := re.match(r"([A-Za-z0-9_.\s\-]+?)\s*=", stripped):
            lines.setdefault(table + re.sub(r"\s*\.\s*", ".", key.group(1)), number)
    return lines


def _flatten(table: Mapping[str, Any], path: Path, prefix: str = "") -> dict[str, Any]:
    """`{"student_train": {"epochs": 10}}` -> `{"student_train.epochs": 10}`."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, path, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`["student_train.epochs=10", "max_len=64"]` -> {"student_train.epochs": 10, "max_len": 64}:
    values as JSON where they parse, else as text (typed against the field when applied)."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field.strip():
            raise BenchError(f"--set {item!r} is not FIELD=VALUE",
                             "write e.g. --set student_train.epochs=10 (`python -m bench ls presets` shows the fields)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[field.strip()] = value
    return out


def _field_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields_of(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` as a field of type `hint` holds it; a two-line error when it cannot be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _typed(value, inner[0], where)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        if isinstance(items, list | tuple):
            try:
                return tuple(_typed(v.strip() if isinstance(v, str) else v, args[0], where) for v in items)
            except BenchError:
                pass
        raise _wrong_type(where, value, "a list such as 0,2,4")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _wrong_type(where, value, "true or false")
    if hint is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong_type(where, value, "a whole number")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _wrong_type(where, value, "a number such as 1e-4")
    if hint is str:
        return value if isinstance(value, str) else json.dumps(value)
    raise _wrong_type(where, value, f"a {getattr(hint, '__name__', hint)}")


def _wrong_type(where: str, value: Any, want: str) -> BenchError:
    return BenchError(f"{where}: {json.dumps(value)} is not {want}", f"give {where} {want}")


def apply_change(preset: Preset, field_path: str, value: Any, where: str | None = None) -> Preset:
    """`preset` with the (possibly nested) field at `field_path` set to `value`, typed against the field."""
    where = where or field_path
    parts = field_path.split(".")
    if parts[0] in UNSETTABLE:
        hint = ("name a setting of your own with a preset file (name = ...)" if parts[0] in ("name", "description")
                else "set the field itself: changes apply after the suite's overrides; per suite, use a preset "
                     "file's [suite_overrides.<suite>] table")
        raise BenchError(f"{where}: {parts[0]} cannot be changed this way", hint)

    def set_in(obj: Any, parts: list[str], trail: str) -> Any:
        names = _fields_of(type(obj))
        head, rest = parts[0], parts[1:]
        if head not in names:
            settable = [n for n in names if n not in UNSETTABLE]
            close = difflib.get_close_matches(head, settable, n=1, cutoff=0.6)
            what = f"{where}: {type(obj).__name__} has no field {head!r}"
            what += f"; did you mean {trail + close[0]!r}?" if close else ""
            raise BenchError(what, f"its fields: {', '.join(trail + n for n in settable)}")
        hint = _field_hints(type(obj))[head]
        current = getattr(obj, head)
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(current):
            if not rest:
                sub = ", ".join(f"{trail}{head}.{n}" for n in _fields_of(type(current)))
                raise BenchError(f"{where}: {trail}{head} is a group of fields", f"set one of them: {sub}")
            return dataclasses.replace(obj, **{head: set_in(current, rest, f"{trail}{head}.")})
        if rest:
            raise BenchError(f"{where}: {trail}{head} is a single value, not a group of fields",
                             f"write {trail}{head}=VALUE")
        return dataclasses.replace(obj, **{head: _typed(value, hint, where)})

    try:
        return set_in(preset, parts, "")
    except (ValueError, TypeError) as exc:  # a field's own check (e.g. LatencyConfig's repeats)
        raise BenchError(f"{where}: {exc}", "give a value the field accepts") from None


def _field_value(preset: Preset, field_path: str) -> Any:
    value: Any = preset
    for part in field_path.split("."):
        value = getattr(value, part)
    return value


def model_ref(ref: str, layers: tuple[int, ...] | None = None) -> ModelSpec:
    """`--teacher`/`--student REF`: `random:` shapes are fresh weights, anything else pretrained;
    with `layers`, cut from those layers."""
    if ref.startswith("random:"):  # fresh weights whatever the init; "random" only cuts them (as presets write it)
        return ModelSpec(ref, init="random", layers=layers) if layers else ModelSpec(ref)
    return ModelSpec(ref, init="truncate" if layers else "pretrained", layers=layers)


def cut_student(preset: Preset, layers: tuple[int, ...]) -> ModelSpec:
    """The preset's student cut from `layers` of its model (0-based)."""
    if preset.student.init == "random" and not preset.student.layers:
        raise BenchError(f"the {preset.name} preset's student is not cut from a model",
                         "use --student-layers with a preset whose student is a pretrained model")
    init = "truncate" if preset.student.init == "pretrained" else preset.student.init
    return dataclasses.replace(preset.student, init=init, layers=layers)


def _check_budgets(preset: Preset, label: str) -> None:
    for part in ("teacher_train", "student_train"):
        config = getattr(preset, part)
        for name in ("epochs", "batch_size"):
            if getattr(config, name) < 1:
                raise BenchError(f"{label}: {part}.{name} is {getattr(config, name)}", f"give {part}.{name} >= 1")
        if config.lr <= 0:
            raise BenchError(f"{label}: {part}.lr is {config.lr}", f"give {part}.lr > 0, e.g. 1e-4")
    if preset.max_len < 2:
        raise BenchError(f"{label}: max_len is {preset.max_len}", "give max_len >= 2 (tokens a row), e.g. 128")


def named_preset(name: str, registry=None) -> Preset:
    """A built-in preset, or one a plugin registered."""
    if name in PRESETS:
        return PRESETS[name]
    plugins = registry.presets if registry is not None else {}
    if name in plugins:
        return plugins[name]
    raise unknown_name("preset", name, [*PRESETS, *plugins], "presets")


def fingerprint(base: Preset, changes: Mapping[str, Any]) -> str:
    """Of what decides a setting's runs: its base preset (all suites) and its changes."""
    body = {k: v for k, v in base.to_dict().items() if k not in ("name", "description", "source")}
    blob = json.dumps({"base": body, "changes": dict(sorted(changes.items()))}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _spelt(changes: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, ModelSpec):
            return v.describe().replace(" layers ", "@")
        if isinstance(v, list | tuple):
            return ",".join(map(str, v))
        return str(v)
    # models first, then the fields in sorted order: one setting, one name, whatever the command's order
    order = [k for k in MODEL_CHANGES if k in changes] + sorted(k for k in changes if k not in MODEL_CHANGES)
    text = ",".join(f"{k}={value(changes[k])}" for k in order)
    if len(text) > LONG_LABEL:
        text = f"{len(changes)} changes"
    return _component(text)


def _component(text: str) -> str:
    """`text` as one path component: the results store names a setting's folder by it."""
    return re.sub(r"[/\\\s]+", "_", text)


def resolve_setting(preset: str | None, suite: str, *, registry=None, teacher: str | None = None,
                    student: str | None = None, student_layers: tuple[int, ...] | None = None,
                    sets: Mapping[str, Any] | None = None) -> Preset:
    """The preset a command runs under on `suite`: `preset` (a name, or a .toml file; default the
    default preset) changed by the rest. Unchanged, the named preset itself; changed, a setting
    named after its base, its changes and their fingerprint, with the suite's overrides applied."""
    preset = preset or DEFAULT_PRESET
    cli: dict[str, Any] = {}
    if teacher:
        cli["teacher"] = model_ref(teacher)
    if student:
        cli["student"] = model_ref(student, student_layers)
    elif student_layers:
        cli["student-layers"] = student_layers
    cli.update(sets or {})

    if is_preset_file(preset):
        spec = read_preset_file(preset)
        base = named_preset(spec.base, registry)
        file_changes = {k: (v, spec.where(k)) for k, v in spec.changes.items()}
        file_changes.update({k: (v, spec.where(f"suite_overrides.{suite}.{k}"))
                             for k, v in spec.suite_changes.get(suite, {}).items()})
        name = spec.name
        file_id = {**{f"file:{k}": v for k, v in spec.changes.items()},
                   **{f"file:{s}:{k}": v for s, c in spec.suite_changes.items() for k, v in c.items()}}
    else:
        base, file_changes, name, file_id = named_preset(preset, registry), {}, preset, {}
        spec = None

    resolved = dataclasses.replace(base.for_suite(suite), suite_overrides={})
    for field_path, (value, where) in file_changes.items():
        resolved = apply_change(resolved, field_path, value, where)
    effective: dict[str, Any] = {}  # the command line's changes that change something
    for field_path, value in cli.items():
        before = resolved
        if field_path in MODEL_CHANGES[:2]:
            resolved = dataclasses.replace(resolved, **{field_path: value})
        elif field_path == "student-layers":
            resolved = dataclasses.replace(resolved, student=cut_student(resolved, value))
        else:
            resolved = apply_change(resolved, field_path, value, f"--set {field_path}")
            value = _field_value(resolved, field_path)  # as typed: the name spells what runs
        if resolved != before:
            effective[field_path] = value
    if spec is None and not effective:  # a default given is no change: the named preset's runs
        return base
    cli = effective
    label = _component(name) + (f"[{_spelt(cli)}]" if cli else "") + f"-{fingerprint(base, {**file_id, **cli})}"
    _check_budgets(resolved, label)
    description = spec.description if spec else f"{base.name} changed: {_spelt(cli)}"
    source = f"file {spec.path}" if spec else f"{base.source}, changed on the command line"
    return dataclasses.replace(resolved, name=label, description=description, source=source)
