"""The example configs, read from the installed package (its data/configs is the repository's configs/)."""

from __future__ import annotations

from importlib.resources import files


def example_configs() -> dict[str, str]:
    """Name (file stem) -> TOML text of every shipped example, sorted by name."""
    folder = files("mri_lrp") / "data" / "configs"
    found = sorted((p for p in folder.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
    return {p.name.removesuffix(".toml"): p.read_text(encoding="utf-8") for p in found}
