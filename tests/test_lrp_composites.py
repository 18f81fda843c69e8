"""Rule registry, composite presets and per-layer overrides (as the CLI and TOML configs give them)."""

from __future__ import annotations

import tomllib

import pytest
import torch
from torch import nn

from mri_lrp.errors import SettingsError
from mri_lrp.lrp import COMPOSITES, RULES, Explainer, describe_rules, make_rule


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 2 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 2))


def _rules(**kwargs: object) -> dict[str, str]:
    return {name: text for name, kind, text in describe_rules(_net(), **kwargs) if kind in ("Conv3d", "Linear")}


def test_registries_offer_every_rule_and_the_named_presets() -> None:
    assert {"zero", "epsilon", "gamma", "alphabeta", "zplus", "box", "wsquare", "flat"} <= set(RULES)
    assert {"epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"} <= set(COMPOSITES)
    for name in RULES:
        assert make_rule(name).describe().startswith(name)


def test_single_rule_goes_on_every_conv_and_linear_layer() -> None:
    rules = _rules(rule="alphabeta", alpha=1.5, beta=0.5)
    assert set(rules) == {"0", "2", "5", "7"}
    assert all(text == "alphabeta(alpha=1.5, beta=0.5, include_bias=False)" for text in rules.values())


@pytest.mark.parametrize(("composite", "expected"), [
    ("epsilon-plus-flat", ["flat", "zplus", "epsilon", "epsilon"]),
    ("epsilon-gamma-box", ["box", "gamma", "epsilon", "epsilon"]),
    ("epsilon-alpha2-beta1", ["alphabeta", "alphabeta", "epsilon", "epsilon"]),
    ("epsilon-alpha2-beta1-flat", ["flat", "alphabeta", "epsilon", "epsilon"]),
])
def test_presets_put_first_layer_conv_and_dense_rules_in_place(composite: str, expected: list[str]) -> None:
    rules = _rules(composite=composite, alpha=5.0, beta=4.0)
    assert [text.split("(")[0] for text in rules.values()] == expected
    if "alpha2" in composite:
        assert "alpha=2.0, beta=1.0" in rules["2"]  # the preset's own alpha/beta win


def test_composite_name_is_accepted_as_the_rule_name() -> None:
    assert _rules(rule="epsilon-gamma-box") == _rules(composite="epsilon-gamma-box")


def test_overrides_from_toml_match_layer_names_and_types_later_patterns_winning() -> None:
    config = tomllib.loads('''
        [overrides]
        "Linear" = { rule = "epsilon", epsilon = 0.25 }
        "7" = "zero"
        "0" = { rule = "box", low = -2.0, high = 2.0 }
    ''')
    rules = _rules(rule="alphabeta", overrides=config["overrides"])
    assert rules["0"] == "box(low=-2.0, high=2.0, epsilon=1e-06)"
    assert rules["2"].startswith("alphabeta")
    assert rules["5"] == "epsilon(epsilon=0.25)"
    assert rules["7"] == "zero"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rule": "nope"}, "unknown LRP rule"),
    ({"composite": "nope"}, "unknown composite"),
    ({"overrides": {"0": {"rule": "epsilon", "gamma": 1.0}}}, "takes no parameter"),
    ({"overrides": {"0": {"epsilon": 1.0}}}, "'rule' key"),
    ({"rule": "alphabeta", "alpha": -1.0, "beta": 0.0}, "must be >= 0"),
    ({"batchnorm": "merge"}, "batchnorm rule"),
    ({"alfa": 2.0}, "unknown LRP parameter"),
])
def test_bad_rule_settings_are_settings_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Explainer(_net(), **kwargs)


def test_describe_lists_every_layer_with_what_relevance_does_there() -> None:
    rows = describe_rules(_net(), composite="epsilon-plus-flat")
    assert [kind for _, kind, _ in rows] == ["Conv3d", "ReLU", "Conv3d", "ReLU", "Flatten", "Linear", "ReLU",
                                             "Linear"]
    assert rows[1][2] == "pass-through"
