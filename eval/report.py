"""The run report: what went in, what was learned, how it scores beside the paper, and how to
reproduce it. One list of blocks (headings, paragraphs, tables, figures) is rendered twice:
`report.md` (figures as PNG files beside it) and a self-contained `report.html` (figures inline).

It reads only the stages' outputs: the data funnel and tokenizer stats from their manifests,
the curves from the pretraining `metrics.jsonl`, the scores from each task's `results.json`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.config import ReportConfig

# The paper's scores (Radford et al., 2018, tables 2-4); GLUE tasks were scored on the test server.
PAPER = {
    "mnli_m": 82.1, "mnli_mm": 81.4, "snli": 89.9, "scitail": 88.3, "qnli": 88.1, "rte": 56.0, "story_cloze": 86.5,
    "race_m": 62.9, "race_h": 57.4, "race": 59.0, "cola": 45.4, "sst2": 91.3, "mrpc": 82.3, "stsb": 82.0, "qqp": 70.3,
}  # fmt: skip
PAPER_GLUE = 72.8
# Table 5: the average over its task columns, per variant.
PAPER_ABLATIONS = {"full": 74.7, "no_pretrain": 59.9, "no_aux": 75.0}
STAGES = ("data", "tokenizer", "shards", "pretrain", "eval")


@dataclass(frozen=True)
class Block:
    kind: str  # h1, h2, p, table, figure
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()  # a table's rows, the first is the header
    png: bytes = b""  # a figure


def _table(header: list[str], rows: list[list[Any]]) -> Block:
    return Block("table", rows=(tuple(header), *(tuple(str(c) for c in r) for r in rows)))


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def score_table(eval_dir: Path) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Header and rows (task, metric, split, examples, mean ± std per variant, the paper's score) of an
    eval stage's folder, and the results they come from."""
    results = [json.loads(p.read_text()) for p in sorted(eval_dir.glob("*/results.json"))]
    variants = list(dict.fromkeys(v for r in results for v in r["summary"]))
    rows = []
    for r in results:
        for name, split in r["splits"].items():
            cells = []
            for variant in variants:
                s = r["summary"].get(variant, {}).get(name, {}).get(r["metric"])
                spread = f" ± {s['std']:.1f}" if s and s["seeds"] > 1 else ""
                cells.append("-" if s is None else f"{s['mean']:.1f}{spread}")
            rows.append([name, r["metric"], split["split"], f"{split['n']:,}", *cells, str(PAPER.get(name, "-"))])
    return ["task", "metric", "split", "examples", *variants, "paper"], rows, results


def results_section(eval_dir: Path) -> list[Block]:
    """Our score (mean ± std over seeds) per scored split and variant, with the paper's beside it."""
    from eval.tasks import TASKS

    header, rows, results = score_table(eval_dir)
    if not results:
        return [Block("h2", "Fine-tuning"), Block("p", "No tasks were configured (eval.tasks is empty).")]
    variants = header[4:-1]
    blocks = [Block("h2", "Fine-tuning results"), _table(header, rows)]
    seeds = sorted({len(r["config"]["seeds"]) for r in results})
    notes = [f"Scores in percent: the final model after {results[0]['config']['epochs']} epochs, mean over "
             f"{'/'.join(map(str, seeds))} seed(s) (± the standard deviation where there are several)."]  # fmt: skip
    glue = _manifest(eval_dir).get("glue")  # computed by the eval stage
    if glue:
        notes.append(f"GLUE average over {', '.join(glue['tasks'])}: {glue['average']:.1f} (paper: {PAPER_GLUE}, "
                     "all nine tasks).")  # fmt: skip
    if any(TASKS[r["task"]].glue for r in results):
        notes.append("GLUE tasks are scored here on dev; the paper's GLUE scores are from the test server.")
    if "full" in variants and "no_pretrain" in variants:
        notes.append(pretraining_gains(results))
    if len(variants) > 1:
        paper = ", ".join(f"{k} {v}" for k, v in PAPER_ABLATIONS.items())
        notes.append("Ablations: no_pretrain fine-tunes the same architecture from random weights; no_aux drops the "
                     f"auxiliary LM loss. The paper's table 5 averages over its tasks: {paper}.")  # fmt: skip
    if all(r["task"].startswith("proxy_") for r in results):
        notes.append("These are the offline proxy tasks built from this run's validation documents; the paper has "
                     "no numbers for them.")  # fmt: skip
    return blocks + [Block("p", n) for n in notes]


def pretraining_gains(results: list[dict[str, Any]]) -> str:
    """What pretraining buys on each scored split: full minus no_pretrain, beside the larger spread."""
    gains = []
    for r in results:
        for name in r["splits"]:
            full, random = (r["summary"].get(v, {}).get(name, {}).get(r["metric"]) for v in ("full", "no_pretrain"))
            if full and random:
                spread = max(full["std"], random["std"])
                gains.append(f"{name} {full['mean'] - random['mean']:+.1f} (spread {spread:.1f})")
    return "Pretrained minus random weights, in points: " + "; ".join(gains) + "."


def _figure(plot: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    plot(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def pretraining_section(pretrain_dir: Path) -> list[Block]:
    from training.metrics import read_metrics

    records = read_metrics(pretrain_dir)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    result = _manifest(pretrain_dir).get("result", {})
    if not train:
        return [Block("h2", "Pretraining"), Block("p", "No training metrics were found.")]
    job = json.loads((pretrain_dir / "job.json").read_text())
    model, tcfg = job["model"], job["train"]
    nan = float("nan")
    summary = (f"GPT-1 with {model['n_layer']} layers × {model['n_embd']} wide, {model['n_head']} heads, context "
               f"{model['n_positions']}, vocabulary {model['vocab_size']:,}; {result.get('steps', 0):,} steps of "
               f"{tcfg['global_batch']} sequences ({result.get('tokens', 0):,} tokens). Final train loss "
               f"{result.get('train_loss', nan):.3f}, validation loss {result.get('val_loss', nan):.3f} "
               f"(perplexity {result.get('val_perplexity', nan):.1f}); {result.get('tokens_per_s', 0):,.0f} "
               "tokens/s on average.")  # fmt: skip

    def loss(ax: Any) -> None:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation", ms=3)
        ax.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
        ax.legend()

    def perplexity(ax: Any) -> None:
        ax.plot([r["step"] for r in val], [r["perplexity"] for r in val], "o-", ms=3, color="tab:orange")
        ax.set(xlabel="step", ylabel="perplexity", title="Validation perplexity")

    def lr(ax: Any) -> None:
        ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green")
        ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")

    def throughput(ax: Any) -> None:
        ax.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train], lw=1, label="tokens/s")
        ax.set(xlabel="step", ylabel="tokens/s", title="Throughput")
        mfu = [(r["step"], r["mfu"]) for r in train if r.get("mfu") is not None]
        if mfu:
            twin = ax.twinx()
            twin.plot(*zip(*[(s, 100 * m) for s, m in mfu]), color="tab:red", lw=1)
            twin.set_ylabel("MFU (%)", color="tab:red")

    mfu_note = "" if any(r.get("mfu") for r in train) else " (MFU is drawn on GPUs with a known peak; none here)"
    return [Block("h2", "Pretraining"), Block("p", summary),
            Block("figure", "Training and validation loss", png=_figure(loss)),
            Block("figure", "Validation perplexity", png=_figure(perplexity)),
            Block("figure", "Learning rate: linear warm-up, then the decay", png=_figure(lr)),
            Block("figure", "Training throughput" + mfu_note, png=_figure(throughput))]  # fmt: skip


def data_section(data_dir: Path, tokenizer_dir: Path, shards_dir: Path) -> list[Block]:
    counts = _manifest(data_dir).get("counts")
    blocks = [Block("h2", "Data")]
    if counts:
        from pipeline.data_stage import funnel_rows

        note = "Documents per source: every document in is kept, rejected with a reason, or a duplicate."
        blocks += [Block("p", note), _table(*funnel_rows(counts))]
    splits = _manifest(shards_dir).get("splits", {})
    if splits:
        rows = [[s, f"{t['tokens']:,}", f"{t['documents']:,}", t["files"]] for s, t in splits.items()]
        blocks.append(_table(["split", "tokens", "documents", "shards"], rows))
    tok = _manifest(tokenizer_dir)
    meta = tok.get("tokenizer", {})
    if meta:
        shape = f"{meta['style']} BPE, {meta['merges']:,} merges, {meta['vocab_size']:,} ids with the special tokens."
        blocks += [Block("h2", "Tokenizer"), Block("p", shape)]
        rows = [[split, f"{s['documents']:,}", f"{s['tokens_per_word']:.3f}", f"{s['bytes_per_token']:.3f}",
                 f"{s['unknown_rate']:.4%}"] for split, s in tok.get("stats", {}).items() if s]  # fmt: skip
        if rows:
            blocks.append(_table(["split", "documents", "tokens/word", "bytes/token", "unknown"], rows))
    return blocks


def provenance_section(dirs: dict[str, Path], config_hash: str | None) -> list[Block]:
    rows = []
    for stage, folder in dirs.items():
        m = _manifest(folder)
        rows.append([stage, m.get("key", "-"), m.get("digest", "-")[:16], f"{m.get('seconds', 0):.1f}", str(folder)])
    versions = next((_manifest(d).get("versions") for d in dirs.values() if _manifest(d)), {}) or {}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [Block("h2", "Provenance"),
            _table(["stage", "key", "digest", "seconds", "folder"], rows),
            Block("p", f"Code commit {commit}; config hash {config_hash or '-'}; "
                       + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."),
            Block("p", f"Host: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs{_gpus()}.")]  # fmt: skip


def _gpus() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    return ", no GPU"


def build(dirs: dict[str, Path], cfg: ReportConfig, run_name: str, config_hash: str | None = None) -> list[Block]:
    """Every block of the report for a run whose stage folders are `dirs`."""
    blocks = [Block("h1", cfg.title),
              Block("p", f"Run {run_name}, reported {time.strftime('%Y-%m-%d %H:%M')}.")]  # fmt: skip
    if "eval" in dirs:
        blocks += results_section(dirs["eval"])
    if "pretrain" in dirs:
        blocks += pretraining_section(dirs["pretrain"])
    if {"data", "tokenizer", "shards"} <= dirs.keys():
        blocks += data_section(dirs["data"], dirs["tokenizer"], dirs["shards"])
    return blocks + provenance_section(dirs, config_hash)


def to_markdown(blocks: list[Block], out: Path) -> str:
    lines, figure = [], 0
    for b in blocks:
        if b.kind in ("h1", "h2"):
            lines += [f"{'#' if b.kind == 'h1' else '##'} {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "table":
            header, *rows = b.rows
            lines += [f"| {' | '.join(header)} |", f"|{'|'.join(' --- ' for _ in header)}|"]
            lines += [f"| {' | '.join(r)} |" for r in rows] + [""]
        else:
            figure += 1
            (out / f"figure-{figure}.png").write_bytes(b.png)
            lines += [f"![{b.text}](figure-{figure}.png)", "", f"*{b.text}*", ""]
    return "\n".join(lines)


STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em;border-bottom:2px solid #ddd}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.3em .7em}
th{background:#f5f5f5;text-align:left}td{text-align:right}td:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}"""


def to_html(blocks: list[Block], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]  # fmt: skip
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "table":
            header, *rows = b.rows
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
        else:
            data = base64.b64encode(b.png).decode()
            parts.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")  # fmt: skip
    return "".join(parts) + "</body></html>\n"


def write_report(dirs: dict[str, Path], cfg: ReportConfig, run_name: str, out: Path,
                 config_hash: str | None = None) -> dict[str, str]:  # fmt: skip
    """Write the configured formats into `out`; returns {format: path}."""
    out.mkdir(parents=True, exist_ok=True)
    blocks = build(dirs, cfg, run_name, config_hash)
    written = {}
    if "md" in cfg.formats:
        (out / "report.md").write_text(to_markdown(blocks, out))
        written["md"] = str(out / "report.md")
    if "html" in cfg.formats:
        (out / "report.html").write_text(to_html(blocks, cfg.title))
        written["html"] = str(out / "report.html")
    return written
