"""The `gpt1` commands for the stages before training: the whole chain, config, data, tokenizer,
shards. `launch.train_cli` adds pretraining, export, the launchers and evaluation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from launch.app import (
    ConfigArg,
    ForceOpt,
    NprocOpt,
    RayAddressOpt,
    SetOpt,
    TokenizerOpt,
    app,
    config_app,
    load,
    run_stages,
    shards_app,
    start_local,
    tokenizer_app,
    user_errors,
)
from launch.config import dump_config
from launch.stages import build_chain, data_stage, shards_stage, tokenizer_stage
from pipeline.log import console
from pipeline.runner import StageError, read_manifest
from tokenizer.bpe import BPETokenizer


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
    outcomes = run_stages(cfg, chain, until=until, force=set(force or []), ray_address=ray_address)
    table = Table(title=f"run {cfg.run.name}", title_justify="left")
    for column in ("stage", "status", "seconds", "summary", "output"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.1f}", stage_summary(o.name, o.manifest), str(o.dir))
    console.print(table)
    report = outcomes[-1].manifest.get("report", {}) if outcomes[-1].name == "report" else {}
    typer.echo(report.get("html") or outcomes[-1].dir)


def stage_summary(stage: str, m: dict) -> str:
    """The counts that say what a stage did, in a few words."""
    if stage == "data":
        return f"{m['counts']['kept']:,} of {m['counts']['in']:,} documents kept"
    if stage == "tokenizer":
        return f"{m['tokenizer']['vocab_size']:,} ids, {m['tokenizer']['merges']:,} merges"
    if stage == "shards":
        return ", ".join(f"{split} {t['tokens']:,} tokens" for split, t in m["splits"].items())
    if stage == "pretrain":
        r = m["result"]
        return f"{r['steps']:,} steps, val perplexity {r['val_perplexity']:.1f}"
    if stage == "eval":
        glue = m.get("glue")
        return f"{len(m['tasks'])} tasks" + (f", GLUE {glue['average']:.1f}" if glue else "")
    return ", ".join(m.get("report", {}))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (<out_dir>/<name>).", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="Folder to write [default: RUN_DIR/report/latest].",
                                             show_default=False)] = None,
) -> None:  # fmt: skip
    """Write report.md and report.html from the stages a run has completed so far."""
    import json

    from eval.config import ReportConfig
    from eval.report import STAGES, write_report

    index = run_dir / "stages.json"
    if not index.is_file():
        with user_errors():
            raise StageError(f"{run_dir}: not a run folder (no stages.json)")
    stages = json.loads(index.read_text())
    dirs = {name: Path(stages[name]["dir"]) for name in STAGES
            if name in stages and (Path(stages[name]["dir"]) / "manifest.json").is_file()}  # fmt: skip
    previous = read_manifest(Path(stages["report"]["dir"])) if "report" in stages else None
    cfg = ReportConfig.model_validate(previous["config"]["report"]) if previous else ReportConfig()
    config_hash = previous.get("config_hash") if previous else None
    written = write_report(dirs, cfg, run_dir.name, out or run_dir / "report" / "latest", config_hash)
    typer.echo(written.get("html") or written.get("md"))


@app.command()
def data(
    config: ConfigArg,
    set_: SetOpt = None,
    force: ForceOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Ingest, clean, deduplicate and split the configured sources into Parquet (on Ray)."""
    cfg = load(config, set_)
    (outcome,) = run_stages(cfg, [data_stage(cfg)], force={"data"} if force else set(), ray_address=ray_address)
    console.print(funnel_table(outcome.manifest["counts"]))
    typer.echo(outcome.dir)


@tokenizer_app.command("train")
def tokenizer_train(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
                    ray_address: RayAddressOpt = None) -> None:  # fmt: skip
    """Train BPE on the clean training documents (running the data stage first if needed)."""
    cfg = load(config, set_)
    stages = [data_stage(cfg), tokenizer_stage(cfg)]
    outcome = run_stages(cfg, stages, force={"tokenizer"} if force else set(), ray_address=ray_address)[-1]
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
    outcome = run_stages(cfg, stages, force={"shards"} if force else set(), ray_address=ray_address)[-1]
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


def funnel_table(counts: dict) -> Table:
    """Documents in, rejected by reason, duplicates and kept: a column per source and the total."""
    from pipeline.data_stage import funnel_rows

    header, rows = funnel_rows(counts)
    table = Table(title="documents", title_justify="left")
    table.add_column("")
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row, end_section=row[0] in ("in", "duplicates"))
    return table


from launch import train_cli  # noqa: E402  (registers train, export, launch and eval on the app)

__all__ = ["app", "train_cli"]


if __name__ == "__main__":
    app()
