"""`gpt1`: raw text to a trained GPT-1 and a benchmark report.

Every command takes a YAML config (see configs/) and `--set section.key=value` overrides.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from launch import launchers
from launch.config import Config, ConfigError, dump_config, load_config
from launch.launchers import LaunchError
from launch.stages import Start, build_chain, data_stage, shards_stage, tokenizer_stage, write_job
from pipeline.log import console, setup_logging
from pipeline.runner import Runner, Stage, StageError, StageOutcome, read_manifest
from pipeline.shard_format import ShardFormatError
from tokenizer.bpe import BPETokenizer, TokenizerError
from training.config import CheckpointError

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


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one line per problem on stderr and exit status 2."""
    try:
        yield
    except (ConfigError, StageError, TokenizerError, ShardFormatError, CheckpointError, LaunchError) as e:
        for line in str(e).splitlines():
            console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
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
    ray_address: RayAddressOpt = None,
    nproc: NprocOpt = None,
) -> None:
    """Run the whole chain, skipping every stage whose output is already complete."""
    cfg = load(config, set_)
    chain = build_chain(cfg, start_local(cfg, nproc, None))
    outcomes = _run_stages(cfg, chain, until=until, force=set(force or []), ray_address=ray_address)
    table = Table(title=f"run {cfg.run.name}", title_justify="left")
    for column in ("stage", "status", "seconds", "output"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.1f}", str(o.dir))
    console.print(table)


@app.command()
def data(
    config: ConfigArg,
    set_: SetOpt = None,
    force: ForceOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Ingest, clean, deduplicate and split the configured sources into Parquet (on Ray)."""
    cfg = load(config, set_)
    (outcome,) = _run_stages(cfg, [data_stage(cfg)], force={"data"} if force else set(), ray_address=ray_address)
    console.print(funnel_table(outcome.manifest["counts"]))
    typer.echo(outcome.dir)


@tokenizer_app.command("train")
def tokenizer_train(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
                    ray_address: RayAddressOpt = None) -> None:  # fmt: skip
    """Train BPE on the clean training documents (running the data stage first if needed)."""
    cfg = load(config, set_)
    stages = [data_stage(cfg), tokenizer_stage(cfg)]
    outcome = _run_stages(cfg, stages, force={"tokenizer"} if force else set(), ray_address=ray_address)[-1]
    console.print(tokenizer_table(outcome.manifest))
    typer.echo(outcome.dir)


@tokenizer_app.command("encode")
def tokenizer_encode(
    text: Annotated[str, typer.Argument(help="Text to encode; - reads standard input.", show_default=False)],
    tokenizer: TokenizerOpt,
    tokens: Annotated[bool, typer.Option("--tokens", help="Print the tokens beside their ids.")] = False,
) -> None:
    """Print the token ids of TEXT, space-separated."""
    tok = _load_tokenizer(tokenizer)
    text = sys.stdin.read() if text == "-" else text
    ids = tok.encode(text)
    if tokens:
        for i, token in zip(ids, tok.tokens(text)):
            typer.echo(f"{i}\t{token!r}")
    else:
        typer.echo(" ".join(map(str, ids)))


@tokenizer_app.command("decode")
def tokenizer_decode(
    ids: Annotated[list[int], typer.Argument(help="Token ids.", show_default=False)], tokenizer: TokenizerOpt
) -> None:
    """Print the text of token ids (special tokens left out)."""
    tok = _load_tokenizer(tokenizer)
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        console.print(f"[bold red]error:[/] ids out of range 0..{tok.vocab_size - 1}: {bad[:5]}", highlight=False)
        raise typer.Exit(2)
    typer.echo(tok.decode(ids))


@tokenizer_app.command("stats")
def tokenizer_stats(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer folder.", show_default=False)],
    docs: Annotated[
        Path | None, typer.Option(help="Measure on these documents: a data-stage split folder (e.g. .../val).",
                                  show_default=False)] = None,
) -> None:  # fmt: skip
    """Vocabulary size, tokens per word, bytes per token and unknown-token rate (default: the val split
    as measured when the tokenizer was trained)."""
    from pipeline.documents import doc_files, read_texts
    from tokenizer.stats import corpus_stats

    tok = _load_tokenizer(tokenizer)
    summary = {"tokenizer": tok.meta, "stats": (read_manifest(tokenizer) or {}).get("stats", {})}
    if docs is not None:
        files = doc_files(docs) if docs.is_dir() else [docs]
        if not files:
            console.print(f"[bold red]error:[/] {escape(str(docs))}: no part-*.parquet files", highlight=False)
            raise typer.Exit(2)
        summary["stats"] = {docs.name: corpus_stats(tok, read_texts(files, desc="encode"))}
    console.print(tokenizer_table(summary))


def _load_tokenizer(folder: Path) -> BPETokenizer:
    with user_errors():
        return BPETokenizer.load(folder)


def tokenizer_table(summary: dict) -> Table:
    """The tokenizer's shape and, per measured split, how well it fits."""
    meta = summary["tokenizer"]
    table = Table(title=f"tokenizer ({meta['style']})", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("merges", f"{meta['merges']:,}")
    table.add_row("vocabulary (with specials)", f"{meta['vocab_size']:,}")
    table.add_row("special ids", ", ".join(f"{k} {v}" for k, v in meta["specials"].items()), end_section=True)
    for split, s in summary.get("stats", {}).items():
        if s is None:
            continue
        table.add_row(f"{split}: documents", f"{s['documents']:,}")
        table.add_row(f"{split}: tokens per word", f"{s['tokens_per_word']:.3f}")
        table.add_row(f"{split}: bytes per token", f"{s['bytes_per_token']:.3f}")
        table.add_row(f"{split}: unknown-token rate", f"{s['unknown_rate']:.4%}", end_section=True)
    return table


@shards_app.command("build")
def shards_build(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
                 ray_address: RayAddressOpt = None) -> None:  # fmt: skip
    """Tokenize the clean documents and pack them into token shards (running the data and tokenizer
    stages first if needed). Only document files whose text or tokenizer changed are re-encoded."""
    cfg = load(config, set_)
    stages = [data_stage(cfg), tokenizer_stage(cfg), shards_stage(cfg)]
    outcome = _run_stages(cfg, stages, force={"shards"} if force else set(), ray_address=ray_address)[-1]
    table = Table(title="shards", title_justify="left")
    for column in ("split", "tokens", "documents", "shards"):
        table.add_column(column, justify="right")
    for split, t in outcome.manifest["splits"].items():
        table.add_row(split, f"{t['tokens']:,}", f"{t['documents']:,}", str(t["files"]))
    console.print(table)
    typer.echo(outcome.dir)


ShardsDirArg = Annotated[Path, typer.Argument(help="Shards folder (the shards stage's output).", show_default=False)]


@shards_app.command("verify")
def shards_verify(folder: ShardsDirArg) -> None:
    """Check every shard's header, size, sha256 and token ids; exit 1 with one line per fault."""
    from pipeline.shards import verify

    with user_errors():
        faults = verify(folder)
    for fault in faults:
        console.print(f"[bold red]fault:[/] {escape(fault)}", highlight=False, soft_wrap=True)
    if faults:
        raise typer.Exit(1)
    typer.echo(f"ok: {folder}")


@shards_app.command("inspect")
def shards_inspect(
    folder: ShardsDirArg,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", "-t", help="Tokenizer folder for the sample "
                         "(default: the one the shards were built with).", show_default=False)] = None,
) -> None:  # fmt: skip
    """Token and document counts, document length histogram, and a decoded sample per split."""
    from pipeline.shard_format import read_index
    from pipeline.shards import inspect

    with user_errors():
        report = inspect(folder)
        tok = _load_tokenizer(tokenizer or Path(read_index(folder)["tokenizer"]["dir"]))
    for split, r in report.items():
        console.print(f"[bold]{split}[/]: {r['tokens']:,} tokens, {r['documents']:,} documents, {r['shards']} shards, "
                      f"mean document {r['mean_length']:.0f} tokens", highlight=False)  # fmt: skip
        table = Table()
        table.add_column("document tokens", justify="right")
        table.add_column("documents", justify="right")
        for lo, hi, n in r["length_histogram"]:
            if n:
                table.add_row(f"{lo:,}-{hi - 1:,}", f"{n:,}")
        console.print(table)
        console.print(f"[bold]{split} sample:[/] {escape(tok.decode(r['sample']))!r}", highlight=False)


def _run_stages(
    cfg: Config, stages: list, until: str | None = None, force: set[str] = frozenset(), ray_address: str | None = None
) -> list[StageOutcome]:
    """Run stages under the run folder; stages that use Ray connect to `ray_address` (default: a
    local instance) when they first need it. User errors exit 2."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    with user_errors():
        return Runner(cfg.run_dir, force=force).run(stages, until=until)


def funnel_table(counts: dict) -> Table:
    """Documents in, rejected by reason, duplicates and kept: a column per source and the total."""
    columns = {**counts["sources"], "total": counts}
    reasons = sorted({r for c in columns.values() for r in c["rejected"]})
    table = Table(title="documents", title_justify="left")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    rows = [("in", lambda c: c["in"])]
    rows += [(f"rejected: {r}", lambda c, r=r: c["rejected"].get(r, 0)) for r in reasons]
    rows += [("duplicates", lambda c: c["duplicates"]), ("kept", lambda c: c["kept"]),
             ("  train", lambda c: c["train"]), ("  val", lambda c: c["val"])]  # fmt: skip
    for label, value in rows:
        table.add_row(label, *[f"{value(c):,}" for c in columns.values()], end_section=label in ("in", "duplicates"))
    return table


def start_local(cfg: Config, nproc: int | None, master_port: int | None) -> Start:
    """A launcher for the pretrain stage: the `deepspeed` launcher with `nproc` processes here.
    The batch arithmetic and DeepSpeed keys are checked for that many processes before any stage runs."""
    from training.engine import deepspeed_config

    nproc = nproc or launchers.default_nproc()
    with user_errors():
        try:
            deepspeed_config(cfg.train, cfg.deepspeed, nproc, "fp32")
        except ValueError as e:
            raise ConfigError([str(e)]) from None

    def start(job: Path) -> None:
        _check_exit(subprocess.run(launchers.local_command(job, nproc, master_port or launchers.free_port())))

    return start


def _check_exit(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode:
        raise StageError(f"pretraining failed (exit status {proc.returncode}); its log is above")


def _upstream(cfg: Config, start: Start, force: bool = False,
              ray_address: str | None = None) -> tuple[Runner, Stage]:  # fmt: skip
    """Run data → tokenizer → shards (skipping what is complete); returns the runner and the
    pretrain stage, ready to run."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    *upstream, pretrain = build_chain(cfg, start)
    runner = Runner(cfg.run_dir, force={"pretrain"} if force else set())
    with user_errors():
        runner.run(upstream)
    return runner, pretrain


def _pretrain(cfg: Config, start: Start, force: bool = False, resume: bool = False,
              ray_address: str | None = None) -> StageOutcome:  # fmt: skip
    """Pretraining through `start` (a launcher), after the stages it reads."""
    if force and resume:
        with user_errors():
            raise StageError("--force starts over and --resume continues: choose one")
    runner, pretrain = _upstream(cfg, start, force, ray_address)
    with user_errors():
        folder = runner.folder(pretrain)
        if resume and read_manifest(folder) is None and not (folder / "checkpoints" / "latest").is_file():
            raise StageError(f"nothing to resume: no checkpoint in {folder} (the config decides the folder; "
                             "leave out --resume to start)")  # fmt: skip
        return runner.run_stage(pretrain)


def _show_result(outcome: StageOutcome) -> None:
    r = outcome.manifest["result"]
    table = Table(title=f"pretrain ({outcome.status})", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for label, value in (("steps", f"{r['steps']:,}"), ("tokens", f"{r['tokens']:,}"),
                         ("train loss", f"{r['train_loss']:.4f}"), ("val loss", f"{r['val_loss']:.4f}"),
                         ("val perplexity", f"{r['val_perplexity']:.2f}"),
                         ("tokens/s (mean)", f"{r['tokens_per_s']:,.0f}"),
                         ("checkpoint", r["checkpoint"])):  # fmt: skip
        table.add_row(label, value)
    console.print(table)
    typer.echo(outcome.dir)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    nproc: NprocOpt = None,
    master_port: MasterPortOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint; fail if there is "
                                         "none. (A rerun resumes anyway; this makes sure it does.)")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start pretraining over, deleting its checkpoints.")] = False,
    ray_address: RayAddressOpt = None,
) -> None:  # fmt: skip
    """Pretrain GPT-1 with DeepSpeed on this host (running the data, tokenizer and shards stages first
    if needed). Killed or stopped, it continues from its latest checkpoint when run again."""
    cfg = load(config, set_)
    _show_result(_pretrain(cfg, start_local(cfg, nproc, master_port), force, resume, ray_address))


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint step folder, or a pretrain output (its latest "
                                               "checkpoint).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Folder to write.", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="Output format: hf (transformers' OpenAIGPTLMHeadModel, "
                                         "safetensors, with the tokenizer).")] = "hf",
) -> None:  # fmt: skip
    """Export a checkpoint for use outside this project."""
    from training.export import export_hf

    if format_ != "hf":
        console.print(f"[bold red]error:[/] --format {escape(format_)!r}: known formats: hf", highlight=False)
        raise typer.Exit(2)
    with user_errors():
        typer.echo(export_hf(checkpoint, out))


@launch_app.command("local")
def launch_local(config: ConfigArg, set_: SetOpt = None, nproc: NprocOpt = None,
                 master_port: MasterPortOpt = None) -> None:  # fmt: skip
    """Pretrain with the `deepspeed` launcher on this host (the same as `gpt1 train`)."""
    cfg = load(config, set_)
    _show_result(_pretrain(cfg, start_local(cfg, nproc, master_port)))


@launch_app.command("hosts")
def launch_hosts(
    config: ConfigArg,
    hostfile: Annotated[Path, typer.Option("--hostfile", help="DeepSpeed hostfile: one 'HOST slots=N' per line.",
                                           show_default=False)],
    set_: SetOpt = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Rendezvous host [default: the first "
                                                    "host].", show_default=False)] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port.")] = 29500,
) -> None:  # fmt: skip
    """Pretrain over every host of a hostfile with the `deepspeed` launcher (it reaches the hosts with
    pdsh or ssh). The project, Python and the run folder must be at the same paths on every host."""
    cfg = load(config, set_)
    with user_errors():
        launchers.read_hostfile(hostfile)  # fail before any stage runs

    def start(job: Path) -> None:
        _check_exit(subprocess.run(launchers.hosts_command(job, hostfile, master_port, master_addr)))

    _show_result(_pretrain(cfg, start))


@launch_app.command("slurm")
def launch_slurm(
    config: ConfigArg,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to allocate.", show_default=False)],
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs (and processes) per node.",
                                               show_default=False)],
    set_: SetOpt = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.", show_default=False)] = None,
    account: Annotated[str | None, typer.Option(help="SLURM account.", show_default=False)] = None,
    time: Annotated[str | None, typer.Option(help="Time limit (e.g. 2-00:00:00).", show_default=False)] = None,
    cpus_per_gpu: Annotated[int | None, typer.Option(help="CPUs per GPU.", show_default=False)] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port.")] = 29500,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the script with sbatch.")] = False,
) -> None:  # fmt: skip
    """Render an sbatch script that pretrains on NODES × GPUS_PER_NODE processes started by srun (no
    ssh), and print it; --submit hands it to sbatch. The data, tokenizer and shards stages run here
    first if needed. When the job is done, `gpt1 run` records it and goes on."""
    cfg = load(config, set_)
    opts = launchers.Slurm(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, account=account,
                           time=time, job_name=f"gpt1-{cfg.run.name}", master_port=master_port,
                           cpus_per_gpu=cpus_per_gpu)  # fmt: skip
    with user_errors():
        problems = opts.problems()
        if problems:
            raise LaunchError("\n".join(problems))
    runner, pretrain = _upstream(cfg, start=_no_local_start)
    folder = runner.folder(pretrain)
    if read_manifest(folder) is not None:
        console.print(f"pretraining is already complete in {folder}; nothing to submit", highlight=False)
        return
    with user_errors():
        job = write_job(cfg, runner.done["tokenizer"].dir, runner.done["shards"].dir, folder)
    with user_errors():
        script = launchers.slurm_script(job, job.parent, opts)
    path = job.parent / "pretrain.sbatch"
    path.write_text(script)
    sys.stdout.write(script)
    if submit:
        proc = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
        if proc.returncode:
            console.print(f"[bold red]error:[/] sbatch: {escape(proc.stderr.strip())}", highlight=False)
            raise typer.Exit(1)
        console.print(proc.stdout.strip(), highlight=False)
    console.print(f"script: {path}", highlight=False)


def _no_local_start(job: Path) -> None:
    raise AssertionError("the SLURM launcher never trains on this host")


@launch_app.command("ray")
def launch_ray(
    config: ConfigArg,
    num_workers: Annotated[int, typer.Option("--num-workers", help="Training processes (Ray Train workers).",
                                             show_default=False)],
    set_: SetOpt = None,
    address: Annotated[str | None, typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster (host:port) "
                                                "[default: a local instance].", show_default=False)] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="One GPU per worker [default: when this host "
                                              "has one].",
                                      show_default=False)] = None,
) -> None:  # fmt: skip
    """Pretrain on a Ray cluster: Ray Train runs the same training function on every worker."""
    from pipeline.parallel import ensure_ray

    cfg = load(config, set_)
    use_gpu = _has_gpu() if gpu is None else gpu

    def start(job: Path) -> None:
        ensure_ray(address)
        launchers.train_on_ray(job, num_workers, use_gpu)

    _show_result(_pretrain(cfg, start, ray_address=address))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
