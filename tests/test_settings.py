"""Declared settings: the one validator, the per-strategy listings, the JSON Schema of the
whole config (checked against every shipped config and the README), resolved configs."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
import yaml

from activedet.cli import main
from activedet.config import ExperimentConfig, differences, json_schema, load_config
from activedet.errors import ConfigError
from activedet.loop.runner import resolve
from activedet.settings import Settings, setting
from activedet.strategies.registry import available, build_strategy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@dataclass(frozen=True)
class Example(Settings):
    count: int = setting(3, "a count", ge=1)
    lam: float = setting(0.5, "a weight", key="lambda", gt=0, le=1)
    mode: Literal["a", "b"] = setting("a", "a choice")
    cap: int | None = setting(None, "an optional cap", ge=1)
    levels: list[float] = setting([1.0, 2.0], "levels", gt=0, min_items=1)
    flag: bool = setting(False, "a switch")


@pytest.fixture(scope="module")
def schema() -> dict:
    return json_schema({n: c.settings_type.json_schema() for n, c in available().items()})


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ---------------------------------------------------------------------------- the validator
def test_parse_fills_defaults_and_converts() -> None:
    s = Example.parse({"count": 4.0, "lambda": 1, "cap": None, "levels": (3, 4)})
    assert s == Example(count=4, lam=1.0, mode="a", cap=None, levels=[3.0, 4.0], flag=False)
    assert type(s.count) is int and type(s.lam) is float
    assert s.to_dict() == {"count": 4, "lambda": 1.0, "mode": "a", "cap": None, "levels": [3.0, 4.0],
                           "flag": False}
    assert Example.parse(None) == Example()
    assert Example.pick({"count": 2, "someone_elses": 1}).count == 2


@pytest.mark.parametrize("key,value,expected", [
    ("count", 0, "an integer >= 1"), ("count", 2.5, "an integer >= 1"), ("count", True, "an integer"),
    ("lambda", 0, "a number in (0, 1]"), ("lambda", "x", "a number"), ("lambda", float("nan"), "a number"),
    ("mode", "c", "one of a, b"), ("cap", 0, "an integer >= 1 or null"),
    ("levels", [], "a non-empty list of numbers > 0"), ("levels", [1, -1], "numbers > 0"),
    ("flag", "yes", "true or false"),
])
def test_bad_values_name_key_value_and_expectation(key: str, value, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        Example.parse({key: value})
    msg = str(err.value)
    assert f"strategy key '{key}' = {value!r}" in msg and expected in msg


def test_unknown_key_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'strategy.lamda' \(known: .*lambda"):
        Example.parse({"lamda": 0.5})


def test_strategies_reject_bad_values_through_the_declaration() -> None:
    for name, params, key in [("isal", {"damping": 1.0}, "damping"), ("isal", {"scale": [1, 0]}, "scale"),
                              ("localization_stability", {"noise_levels": [300]}, "noise_levels"),
                              ("coreset", {"subset": 0}, "subset"), ("mial_iul", {"selection": "best"}, "selection"),
                              ("learning_loss", {"margin": -1}, "margin"), ("entropy", {"aggregate": "median"}, "aggregate")]:
        with pytest.raises(ConfigError, match=f"'{key}' = "):
            build_strategy(name, params)


def test_no_module_keeps_its_own_validation_helpers() -> None:
    src = ROOT / "src" / "activedet"
    pattern = re.compile(r"^def (_choice|_positive_int\w*|_int|_float|_bool|_number|_levels|_check|_key_error)\(",
                         re.M)
    offenders = [str(p.relative_to(src)) for d in ("strategies", "training") for p in (src / d).glob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
    # strategies and trainers never import each other (MIAL's settings live in models/)
    for importer, imported in (("strategies", "training"), ("training", "strategies")):
        for p in (src / importer).glob("*.py"):
            assert not re.search(rf"^\s*(from|import) activedet\.{imported}\b", p.read_text(), re.M), p.name


# ---------------------------------------------------------------------------- listings
@pytest.mark.parametrize("name", list(available()))
def test_strategies_name_lists_every_setting(name: str, capsys) -> None:
    declared = available()[name].settings_type.declared()
    assert main(["strategies", name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["settings"]
    assert [r["key"] for r in rows] == [d.key for d in declared]
    assert all(r["doc"] and r["expected"] for r in rows)
    listed = {r["key"]: r["default"] for r in rows}
    assert listed == json.loads(json.dumps(available()[name].settings_type.defaults()))
    # what the strategy runs with: the same, except that an 'auto' default is resolved when parsed
    params = json.loads(json.dumps(build_strategy(name).params))
    assert {k: v for k, v in params.items() if listed[k] != "auto"} == {k: v for k, v in listed.items() if v != "auto"}
    assert main(["strategies", name]) == 0
    text = capsys.readouterr().out
    for d in declared:
        assert f"  {d.key}: {json.dumps(d.default)}" in text and d.spec.doc in text


def test_mial_settings_include_trainer_head_and_selection_keys_with_provenance() -> None:
    keys = {d.key: d for d in available()["mial"].settings_type.declared()}
    assert {"lambda", "rounds", "reweight", "mil_weighting", "det_reduction", "top_k", "score_fraction"} <= set(keys)
    assert "authors' code" in keys["regression_loss"].spec.provenance
    assert {"cost_aware", "batch", "preselect"} <= set(keys)  # MIAL ranks: cost-aware and diverse batches
    assert "paper Eq. 1" in keys["det_reduction"].spec.provenance and keys["det_reduction"].default == "sum"
    assert "paper Eq. 8" in keys["max_params"].spec.provenance and keys["max_params"].default == "head"
    assert "cost_aware" in {d.key for d in available()["entropy"].settings_type.declared()}


# ---------------------------------------------------------------------------- JSON Schema
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_and_its_resolved_form_fit_the_schema(path: Path, schema: dict) -> None:
    v = _validator(schema)
    assert list(v.iter_errors(yaml.safe_load(path.read_text()))) == []
    cfg = load_config(path)
    resolve(cfg)
    assert list(v.iter_errors(json.loads(json.dumps(cfg.to_dict())))) == []


@pytest.mark.parametrize("section,key", [("strategy", "lamda"), ("train", "epoch"), (None, "sed")])
def test_schema_rejects_a_misspelled_key(schema: dict, section: str | None, key: str) -> None:
    data = yaml.safe_load((ROOT / "configs" / "mial_voc.yaml").read_text())
    (data[section] if section else data)[key] = 1
    errors = [e.message for e in _validator(schema).iter_errors(data)]
    assert len(errors) == 1 and f"'{key}' was unexpected" in errors[0]


def test_schema_ties_strategy_settings_to_the_name(schema: dict) -> None:
    v = _validator(schema)
    assert v.is_valid({"strategy": {"name": "isal", "depth": 10}})
    assert not v.is_valid({"strategy": {"name": "entropy", "depth": 10}})  # isal's key
    assert not v.is_valid({"strategy": {"name": "isal", "depth": 0}})  # below the declared minimum
    assert not v.is_valid({"strategy": {"top_k": 5}})  # no name: random, which has no settings
    assert v.is_valid({"strategy": "mial"}) and not v.is_valid({"strategy": "mail"})


def test_schema_follows_the_config_dataclasses(schema: dict) -> None:
    """Every dataclass field is a property (so a field added later appears by itself)."""
    props = schema["properties"]
    default = ExperimentConfig()
    assert set(props) == {f.name for f in dataclasses.fields(default)}
    for f in dataclasses.fields(default):
        section = getattr(default, f.name)
        if dataclasses.is_dataclass(section) and f.name != "strategy":
            assert set(props[f.name]["properties"]) == {g.name for g in dataclasses.fields(section)}
            assert props[f.name]["additionalProperties"] is False
    assert props["loop"]["properties"]["unit"]["enum"] == ["images", "boxes", "seconds"]


def test_docs_config_section_lists_every_key_and_fits_the_schema(schema: dict) -> None:
    readme = (ROOT / "docs" / "config.md").read_text()
    section = readme[readme.index("## An experiment config"):]
    block = yaml.safe_load(section[section.index("```yaml") + 7:section.index("```", section.index("```yaml") + 7)])
    assert list(_validator(schema).iter_errors(block)) == []
    props = schema["properties"]
    assert set(block) == set(props), "docs/config.md config block: top-level keys differ from the schema"
    for name, sub in props.items():
        if "properties" in sub and name != "strategy":
            missing = set(sub["properties"]) - set(block[name])
            assert not missing, f"docs/config.md config block lacks {name}.{sorted(missing)}"


def test_cli_schema_and_resolved_config(tmp_path: Path, capsys) -> None:
    assert main(["config", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["properties"]["strategy"]["else"]["properties"]["name"]["default"] \
        == "random"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {train: 'builtin:shapes'}\nstrategy: {name: isal, depth: 7}\nloop: {cycles: 2}\n")
    assert main(["config", str(cfg)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["strategy"]["depth"] == 7 and resolved["strategy"]["damping"] == 0.01
    assert resolved["loop"]["cycles"] == 2 and resolved["train"]["epochs"] == 26
    assert resolved == json.loads(json.dumps(resolved))  # plain data only
    cfg.write_text("dataset: {train: 'builtin:shapes'}\nstrategy: {name: isal, dept: 7}\n")
    assert main(["config", str(cfg)]) == 2
    assert "strategy.dept" in capsys.readouterr().err
    assert main(["config"]) == 2


def test_differences_name_nested_keys() -> None:
    old = {"seed": 0, "strategy": {"name": "isal", "damping": 0.01}, "train": {"lr": 0.1}}
    new = {"seed": 0, "strategy": {"name": "isal", "damping": 0.02, "depth": None}, "train": {"lr": 0.1}}
    assert differences(old, new) == ["strategy.damping: 0.01 -> 0.02", "strategy.depth: '(absent)' -> None"]
    assert differences(new, new) == []
