"""`gpt1`: raw text to a trained GPT-1 and a benchmark report.

Every command takes a YAML config (see configs/) and `--set section.key=value` overrides.
"""

from __future__ import annotations

import atexit
import gc
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from eval.tasks import TaskDataError
from launch import launchers
from launch.config import Config, ConfigError, load_config
from launch.launchers import LaunchError
from launch.stages import Start
from pipeline.log import console, setup_logging
from pipeline.runner import Runner, StageError, StageOutcome
from pipeline.shard_format import ShardFormatError
from tokenizer.bpe import TokenizerError
from training.config import PREEMPTED, CheckpointError

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
tokenizer_app = typer.Typer(help="Train, use and measure the BPE tokenizer.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
shards_app = typer.Typer(help="Build, check and look into token shards.", no_args_is_help=True)
app.add_typer(shards_app, name="shards")
launch_app = typer.Typer(help="Pretrain on this host, over a hostfile, under SLURM or on Ray.", no_args_is_help=True)
app.add_typer(launch_app, name="launch")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file, e.g. configs/tiny.yaml.", show_default=False)]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", envvar="RAY_ADDRESS", show_default=False,
        help="Ray cluster to run the data stages on (host:port); default: a local instance.",
    ),
]  # fmt: skip
TokenizerOpt = Annotated[
    Path, typer.Option("--tokenizer", "-t", help="Tokenizer folder (the tokenizer stage's output).", show_default=False)
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if the output is complete.")]
NprocOpt = Annotated[
    int | None, typer.Option("--nproc", help="Training processes on this host [default: one per GPU, or 1 on CPU].",
                             show_default=False)]  # fmt: skip
MasterPortOpt = Annotated[
    int | None, typer.Option("--master-port", help="Rendezvous port [default: a free one].", show_default=False)
]
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
    atexit.unregister(gc.freeze)  # once, however many commands run in this process
    atexit.register(gc.freeze)  # last: skip the exit's collections, as training.run.exit_now does


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one line per problem on stderr and exit status 2."""
    try:
        yield
    except (
        ConfigError,
        StageError,
        TokenizerError,
        ShardFormatError,
        CheckpointError,
        LaunchError,
        TaskDataError,
    ) as e:
        for line in str(e).splitlines():
            console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def load(config: Path, overrides: list[str] | None) -> Config:
    with user_errors():
        return load_config(config, overrides or [])


def run_stages(
    cfg: Config, stages: list, until: str | None = None, force: set[str] = frozenset(), ray_address: str | None = None
) -> list[StageOutcome]:
    """Run stages under the run folder; stages that use Ray connect to `ray_address` (default: a
    local instance) when they first need it. User errors exit 2."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    with user_errors():
        return Runner(cfg.run_dir, force=force).run(stages, until=until)


def start_local(cfg: Config, nproc: int | None, master_port: int | None) -> Start:
    """A launcher for the pretrain stage: the `deepspeed` launcher with `nproc` processes here.
    The batch arithmetic and DeepSpeed keys are checked for that many processes before any stage runs."""
    from training.engine import deepspeed_config
    from training.run import free_port

    nproc = nproc or launchers.default_nproc()
    with user_errors():
        try:
            deepspeed_config(cfg.train, cfg.deepspeed, nproc, "fp32")
        except ValueError as e:
            raise ConfigError([str(e)]) from None

    def start(job: Path) -> None:
        check_exit(subprocess.run(launchers.local_command(job, nproc, master_port or free_port())))

    return start


def check_exit(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode == PREEMPTED:
        raise StageError("pretraining stopped on a signal after saving a checkpoint; run again to continue")
    if proc.returncode:
        raise StageError(f"pretraining failed (exit status {proc.returncode}); its log is above")
