"""`config list` and `config example`: the example configs that ship with the package."""

from __future__ import annotations

from typing import Annotated

import typer

from mri_lrp.commands.options import fail

config_app = typer.Typer(no_args_is_help=True, help="Example configs that ship with the package.",
                         epilog="[bold]Example[/bold]\n\n  mri-lrp config example alphabeta > my.toml")


@config_app.command("list")
def config_list() -> None:
    """The example configs, with the first line of each."""
    from mri_lrp.configs import example_configs

    for name, text in example_configs().items():
        first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
        typer.echo(f"{name}\t{first}")


@config_app.command("example")
def config_example(name: Annotated[str, typer.Argument(help="Its name, as `mri-lrp config list` shows it.")]) -> None:
    """Print an example config, to save and edit: `mri-lrp config example alphabeta > my.toml`."""
    from mri_lrp.configs import example_configs

    configs = example_configs()
    if name.removesuffix(".toml") not in configs:
        fail(f"no example config '{name}' (there are: {', '.join(configs)})")
    typer.echo(configs[name.removesuffix(".toml")], nl=False)
