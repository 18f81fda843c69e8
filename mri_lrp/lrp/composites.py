"""Which rule each conv/linear layer gets: one rule everywhere, a named preset, and per-layer overrides.

Overrides map a glob pattern (matched against the layer's module name, e.g. ``features.conv0`` or
``layer1.*``, or its type, e.g. ``Linear``) to a rule spec: a rule name, or a table such as
``{"rule": "epsilon", "epsilon": 0.1}`` (so a config file's ``[overrides]`` table loads as is). Later
patterns win over earlier ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from typing import Any

from mri_lrp.errors import SettingsError
from mri_lrp.lrp.graph import Site
from mri_lrp.lrp.rules import RULES, Rule, make_rule


@dataclass(frozen=True)
class Composite:
    """A preset: a rule for the first layer (the one reading the input), for convs and for dense layers."""

    name: str
    description: str
    conv: str
    linear: str
    first: str | None = None
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # rule name -> fixed parameters

    def rule_name(self, site: Site) -> str:
        if site.first and self.first is not None:
            return self.first
        return self.conv if site.kind == "conv" else self.linear


_NAMES_SHOWN = 6  # layer names listed when an override pattern matches none
_AB21 = {"alphabeta": {"alpha": 2.0, "beta": 1.0}}
COMPOSITES: dict[str, Composite] = {c.name: c for c in (
    Composite("epsilon-plus", "z+ on convs, epsilon on dense layers", "zplus", "epsilon"),
    Composite("epsilon-plus-flat", "flat on the first layer, z+ on convs, epsilon on dense layers",
              "zplus", "epsilon", first="flat"),
    Composite("epsilon-gamma-box", "box (data range) on the first layer, gamma on convs, epsilon on dense layers",
              "gamma", "epsilon", first="box"),
    Composite("epsilon-alpha2-beta1", "alpha=2 beta=1 on convs (signed form at the input), epsilon on dense "
              "layers", "alphabeta", "epsilon", fixed=_AB21),
    Composite("epsilon-alpha2-beta1-flat", "flat on the first layer, alpha=2 beta=1 on convs, epsilon on dense "
              "layers", "alphabeta", "epsilon", first="flat", fixed=_AB21),
)}


def _spec(spec: str | Mapping[str, Any], pattern: str) -> tuple[str, dict[str, Any]]:
    """A rule spec as (name, parameters)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("rule"), str):
        params = dict(spec)
        return params.pop("rule"), params
    raise SettingsError(f"override '{pattern}': expected a rule name or a table with a 'rule' key, got {spec!r}")


def check_overrides(overrides: Any) -> None:
    """Validate a table of pattern = rule spec without a model, so a config mistake is found before any work."""
    if not isinstance(overrides, Mapping):
        raise SettingsError(f"overrides: expected a table of pattern = rule, got {overrides!r}")
    for pattern, spec in overrides.items():
        name, params = _spec(spec, pattern)
        try:
            make_rule(name, params, strict=True)
        except SettingsError as exc:
            raise SettingsError(f"override '{pattern}': {exc}") from None


def constant_rule(rule: str = "alphabeta", composite: str | None = None,
                  params: Mapping[str, Any] | None = None) -> Rule:
    """The rule an add of a constant (a bias outside any layer) follows: the one rule, or a composite's rule
    for dense layers (ε in every built-in composite, as LXT treats such an add). Overrides name conv/linear
    layers, so they do not change it."""
    if composite is None and rule.lower() in COMPOSITES:
        composite = rule
    if composite is not None and composite.lower() in COMPOSITES:
        preset = COMPOSITES[composite.lower()]
        return make_rule(preset.linear, {**(params or {}), **preset.fixed.get(preset.linear, {})})
    return make_rule(rule, dict(params or {}))


def assign(sites: list[Site], rule: str = "alphabeta", composite: str | None = None,
           overrides: Mapping[str, str | Mapping[str, Any]] | None = None,
           params: Mapping[str, Any] | None = None) -> list[Rule]:
    """One rule per site. `params` (alpha, beta, epsilon, gamma, ...) fill in whatever a rule takes."""
    params = dict(params or {})
    known = {f.name for cls in RULES.values() for f in fields(cls) if f.init}
    if set(params) - known:
        raise SettingsError(f"unknown LRP parameter(s) {sorted(set(params) - known)} (known: {sorted(known)})")
    if composite is None and rule.lower() in COMPOSITES:
        composite, rule = rule.lower(), "alphabeta"
    preset = None
    if composite is not None:
        if composite.lower() not in COMPOSITES:
            raise SettingsError(f"unknown composite '{composite}' (known: {', '.join(COMPOSITES)})")
        preset = COMPOSITES[composite.lower()]
    if overrides is not None and not isinstance(overrides, Mapping):
        raise SettingsError(f"overrides: expected a table of pattern = rule, got {overrides!r}")
    specs = [_spec(s, p) + (p,) for p, s in (overrides or {}).items()]
    used: set[str] = set()
    rules = []
    for site in sites:
        name, extra = (preset.rule_name(site), dict(preset.fixed.get(preset.rule_name(site), {}))) if preset \
            else (rule, {})
        strict = False
        for spec_name, spec_params, pattern in specs:
            if fnmatchcase(site.name, pattern) or fnmatchcase(site.type_name, pattern):
                name, extra, strict = spec_name, spec_params, True
                used.add(pattern)
        if strict:  # an override's own table must name only parameters its rule takes
            make_rule(name, extra, strict=True)
        rules.append(make_rule(name, {**params, **extra}))
    for _, _, pattern in specs:
        if pattern not in used:  # most likely a typo in a layer name: say so rather than silently ignore it
            warnings.warn(f"override '{pattern}' matches no conv/linear layer (layers: "
                          f"{', '.join(s.name for s in sites[:_NAMES_SHOWN])}"
                          f"{', ...' if len(sites) > _NAMES_SHOWN else ''})", stacklevel=2)
    return rules
