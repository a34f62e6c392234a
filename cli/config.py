"""`neuroscan settings`: the configuration reference, generated from the Settings class."""

from __future__ import annotations

from pathlib import Path

import typer


def settings(
    markdown: bool = typer.Option(False, "--markdown", help="The README's settings table."),
    env_example: bool = typer.Option(False, "--env-example", help="The text of .env.example."),
    write: bool = typer.Option(False, "--write",
                               help="Rewrite README.md's table and .env.example in place."),
) -> None:
    """Print every setting with its default and meaning (or write them into the repository)."""
    from shared import settings_doc

    missing = settings_doc.undocumented()
    if missing:
        typer.echo("settings without a comment in shared/settings.py: " + ", ".join(missing),
                   err=True)
        raise typer.Exit(1)
    if write:
        readme = Path("README.md")
        readme.write_text(settings_doc.replace_readme_table(readme.read_text()))
        Path(".env.example").write_text(settings_doc.env_example())
        typer.echo("wrote README.md (settings table) and .env.example")
        return
    typer.echo(settings_doc.env_example() if env_example else settings_doc.markdown(), nl=False)
