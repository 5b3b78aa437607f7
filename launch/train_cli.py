"""The `gpt1` commands for pretraining, export, the cluster launchers and evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from launch import launchers
from launch.app import (
    ConfigArg,
    ForceOpt,
    MasterPortOpt,
    NprocOpt,
    RayAddressOpt,
    SetOpt,
    app,
    check_exit,
    launch_app,
    load,
    run_stages,
    start_local,
    user_errors,
)
from launch.config import Config, ConfigError, config_hash, dump_config
from launch.launchers import LaunchError
from launch.stages import JOB, Start, build_chain, data_stage, eval_stage, write_job
from pipeline.log import console
from pipeline.runner import Runner, Stage, StageError, StageOutcome, read_manifest, write_text_atomic


def _upstream(cfg: Config, start: Start, force: bool = False,
              ray_address: str | None = None) -> tuple[Runner, Stage]:  # fmt: skip
    """Run data → tokenizer → shards (skipping what is complete); returns the runner and the
    pretrain stage, ready to run."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    upstream, pretrain = _split_chain(cfg, start)
    runner = Runner(cfg.run_dir, force={"pretrain"} if force else set())
    with user_errors():
        runner.run(upstream)
    return runner, pretrain


def _split_chain(cfg: Config, start: Start) -> tuple[list[Stage], Stage]:
    """The stages before pretraining, and the pretrain stage."""
    chain = build_chain(cfg, start)
    at = [stage.name for stage in chain].index("pretrain")
    return chain[:at], chain[at]


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
    hostfile: Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile: one 'HOST slots=N' per "
                                                  "line.", show_default=False)] = None,
    from_slurm: Annotated[bool, typer.Option("--from-slurm", help="Build the hostfile from this SLURM allocation's "
                                             "nodes, --gpus-per-node slots each.")] = False,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="Slots per node with --from-slurm.")] = 8,
    set_: SetOpt = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Rendezvous host [default: the first "
                                                    "host].", show_default=False)] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port.")] = 29500,
) -> None:  # fmt: skip
    """Pretrain over every host of a hostfile with the `deepspeed` launcher (it reaches the hosts with
    pdsh or ssh). The project, Python and the run folder must be at the same paths on every host."""
    cfg = load(config, set_)
    with user_errors():  # fail before any stage runs
        if from_slurm == (hostfile is not None):
            raise LaunchError("give --hostfile or --from-slurm (one of them)")
        if from_slurm:
            hostfile = launchers.hostfile_from_slurm(cfg.run_dir / "hostfile", gpus_per_node)
        launchers.read_hostfile(hostfile)

    def start(job: Path) -> None:
        check_exit(subprocess.run(launchers.hosts_command(job, hostfile, master_port, master_addr)))

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
    ssh), and print it; --submit hands it to sbatch. Rendering runs nothing and needs no network:
    the stages before pretraining run in the job when they are not complete yet. When the job is
    done, `gpt1 run` records it and goes on."""
    cfg = load(config, set_)
    opts = launchers.Slurm(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, account=account,
                           time=time, job_name=f"gpt1-{cfg.run.name}", master_port=master_port,
                           cpus_per_gpu=cpus_per_gpu)  # fmt: skip
    with user_errors():
        problems = opts.problems()
        if problems:
            raise LaunchError("\n".join(problems))
    cfg.run.out_dir = cfg.run.out_dir.resolve()  # the job may start in another folder
    folder = cfg.run_dir / "slurm" / config_hash(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    job = folder / JOB
    upstream, pretrain = _split_chain(cfg, _no_local_start)
    runner = Runner(cfg.run_dir)
    missing = runner.complete(upstream)
    if missing:
        console.print(f"[yellow]note:[/] the {missing} stage is not complete for this config: the job runs it "
                      f"first, on its first node (or run `gpt1 shards build {escape(str(config))}` before)",
                      highlight=False)  # fmt: skip
    elif read_manifest(runner.folder(pretrain)) is not None:
        console.print(f"pretraining is already complete in {runner.folder(pretrain)}; nothing to submit",
                      highlight=False)  # fmt: skip
        return
    else:
        with user_errors():
            _write_job(cfg, runner, pretrain, job)
    prepare = [sys.executable, "-m", "launch.cli", "launch", "job", str(folder / "config.yaml"), "--to", str(job)]
    with user_errors():
        script = launchers.slurm_script(job, folder, opts, prepare)
    path = folder / "pretrain.sbatch"
    path.write_text(script)
    sys.stdout.write(script)
    if submit:
        proc = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
        if proc.returncode:
            console.print(f"[bold red]error:[/] sbatch: {escape(proc.stderr.strip())}", highlight=False)
            raise typer.Exit(1)
        console.print(proc.stdout.strip(), highlight=False)
    console.print(f"script: {path}", highlight=False)


@launch_app.command("job", hidden=True)
def launch_job(
    config: ConfigArg,
    to: Annotated[Path, typer.Option("--to", help="Where to write the job file.", show_default=False)],
    ray_address: RayAddressOpt = None,
) -> None:  # fmt: skip
    """Run the stages before pretraining (skipping what is complete) and write the training job to
    TO: what a rendered SLURM script runs before srun."""
    cfg = load(config, None)
    runner, pretrain = _upstream(cfg, _no_local_start, ray_address=ray_address)
    with user_errors():
        _write_job(cfg, runner, pretrain, to)
    typer.echo(to)


def _write_job(cfg: Config, runner: Runner, pretrain: Stage, to: Path) -> None:
    """The job for the upstream stages `runner` has done, in the pretrain stage's folder and at `to`."""
    job = write_job(cfg, runner.done["tokenizer"].dir, runner.done["shards"].dir, runner.folder(pretrain))
    write_text_atomic(to, job.read_text())


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


@app.command("eval")
def evaluate(
    config: ConfigArg,
    set_: SetOpt = None,
    tasks: Annotated[str | None, typer.Option("--tasks", help="Only these configured tasks, comma-separated.",
                                              show_default=False)] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Fine-tune from this checkpoint (a step "
                          "folder or a pretrain output) instead of the run's own pretraining.",
                          show_default=False)] = None,
    nproc: NprocOpt = None,
    force: ForceOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:  # fmt: skip
    """Fine-tune on each task with the paper's recipe and score it (pretraining first if needed)."""
    cfg = load(config, set_)
    if tasks:
        wanted = [t.strip() for t in tasks.split(",") if t.strip()]
        configured = [t.name for t in cfg.eval.tasks]
        with user_errors():
            unknown = [t for t in wanted if t not in configured]
            if unknown:
                raise ConfigError([f"--tasks: {', '.join(unknown)} not in eval.tasks ({', '.join(configured)})"])
        cfg.eval = cfg.eval.model_copy(update={"tasks": [t for t in cfg.eval.tasks if t.name in wanted]})
    with user_errors():
        if checkpoint is None:
            stages = build_chain(cfg, start_local(cfg, nproc, None))
        else:
            stage = eval_stage(cfg, checkpoint)
            stages = [data_stage(cfg), stage] if "data" in stage.inputs else [stage]
    outcome = run_stages(cfg, stages, force={"eval"} if force else set(), ray_address=ray_address)[-1]
    console.print(results_table(outcome.dir))
    typer.echo(outcome.dir)


def results_table(folder: Path) -> Table:
    """Every scored split of every task: metric, split, examples, mean ± spread per variant, paper."""
    from eval.report import score_table

    header, rows, _ = score_table(folder)
    table = Table(title="fine-tuning", title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column in ("task", "metric", "split") else "right")
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def doctor(
    nproc: Annotated[int, typer.Option("--nproc", help="Processes for the all-reduce check.")] = 2,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where runs will write; its free disk is checked.")] = (
        Path("runs")
    ),
    master_port: MasterPortOpt = None,
) -> None:
    """Check this host before a long job: Python, torch, CUDA and NCCL, GPUs, DeepSpeed, free disk,
    and an all-reduce across NPROC processes (gloo on CPU, NCCL on GPUs). Exit 1 if any check fails."""
    from launch.doctor import run_checks
    from training.run import free_port

    checks = run_checks(nproc, out_dir, master_port or free_port())
    table = Table(title="gpt1 doctor", title_justify="left")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, "[green]pass[/]" if c.ok else "[bold red]FAIL[/]", escape(c.detail))
    console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
