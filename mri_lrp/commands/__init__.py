"""The `mri-lrp` commands other than `explain`, one module per command or group of commands.

Each module holds plain functions with Typer's annotations; `mri_lrp.cli` registers them on its app, so
the app, `explain` and the mapping of errors to exit codes stay in one place.
"""
