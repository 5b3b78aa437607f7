"""`gpt1`: raw text to a trained GPT-1 and a benchmark report.

Every command takes a YAML config (see configs/) and `--set section.key=value` overrides.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from launch.config import Config, ConfigError, dump_config, load_config
from launch.log import console, setup_logging
from launch.stages import build_chain
from pipeline.runner import Runner, StageError

log = logging.getLogger("gpt1")

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file, e.g. configs/tiny.yaml.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable).", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpt1 {metadata.version('gpt1')}")
        raise typer.Exit()


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug output, libraries included.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Raw text to a trained GPT-1 and a benchmark report."""
    setup_logging(-1 if quiet else 1 if verbose else 0)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one line per problem on stderr and exit status 2."""
    try:
        yield
    except (ConfigError, StageError) as e:
        for line in str(e).splitlines():
            console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def load(config: Path, overrides: list[str] | None) -> Config:
    with user_errors():
        return load_config(config, overrides or [])


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved, validated config (YAML, every default filled in)."""
    cfg = load(config, set_)
    sys.stdout.write(dump_config(cfg))


@app.command()
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.", show_default=False)] = None,
    force: Annotated[
        list[str] | None, typer.Option(help="Rerun this stage even if complete (repeatable).", show_default=False)
    ] = None,
) -> None:
    """Run the whole chain, skipping every stage whose output is already complete."""
    cfg = load(config, set_)
    chain = build_chain(cfg)
    if not chain:
        log.warning("this build has no stages to run")
        return
    runner = Runner(cfg.run_dir, force=set(force or []))
    with user_errors():
        outcomes = runner.run(chain, until=until)
    table = Table(title=f"run {cfg.run.name}", title_justify="left")
    for column in ("stage", "status", "seconds", "output"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.1f}", str(o.dir))
    console.print(table)
