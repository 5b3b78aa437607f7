"""Input transforms, task heads, the auxiliary loss, metrics, and fine-tuning end to end on a tiny
proxy task (with the no-pretraining ablation) from a checkpoint folder written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from eval.config import EvalConfig
from eval.evaluate import run_eval
from eval.heads import TaskModel, loss, task_loss
from eval.metrics import accuracy, f1, glue_average, mcc, pearson, spearman
from eval.report import results_section
from eval.tasks import Example
from eval.transforms import collate, encode, row, sequences, shared
from tokenizer.config import TokenizerConfig
from tokenizer.train import train
from training.config import ModelConfig
from training.model import GPT, lm_loss

TOPICS = ["river", "engine", "garden", "violin", "harbour", "glacier", "market", "comet", "forest", "tower", "lamp",
          "bridge", "castle", "desert", "island", "meadow", "rocket", "valley", "window", "planet"]  # fmt: skip
SENTENCES = ["The {t} stood near the old road today.", "Nobody had seen a {t} so large before.",
             "Every morning the {t} looked a little different.", "We walked to the {t} after lunch.",
             "Her brother wrote a long letter about the {t}.", "Later that year the {t} was painted blue."]  # fmt: skip


def documents(copies: int = 2) -> list[str]:
    return [" ".join(s.format(t=t) for s in SENTENCES) for _ in range(copies) for t in TOPICS]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = train(TokenizerConfig(merges=150, min_frequency=1), lambda: iter(documents()))
    tok.save(tmp_path_factory.mktemp("tok"))
    return tok


def test_traversal_layouts_put_the_extract_token_last(tok):
    sp = tok.specials
    a, b = tok.encode("the river"), tok.encode("a lamp")
    assert encode(Example("the river"), "classification", tok, 64) == [[sp.start, *a, sp.extract]]
    assert encode(Example("the river", "a lamp"), "entailment", tok, 64) == [
        [sp.start, *a, sp.delimiter, *b, sp.extract]
    ]
    assert encode(Example("the river", "a lamp"), "similarity", tok, 64) == [
        [sp.start, *a, sp.delimiter, *b, sp.extract], [sp.start, *b, sp.delimiter, *a, sp.extract]]  # fmt: skip
    seqs = encode(Example("the river", choices=("a lamp", "the tower")), "multiple_choice", tok, 64)
    assert seqs == [[sp.start, *a, sp.delimiter, *b, sp.extract],
                    [sp.start, *a, sp.delimiter, *tok.encode("the tower"), sp.extract]]  # fmt: skip


def test_truncation_cuts_the_longer_part_and_keeps_the_extract_token(tok):
    long, short = " ".join(["river"] * 40), "the lamp"
    (seq,) = encode(Example(long, short), "entailment", tok, 20)
    assert len(seq) == 20 and seq[-1] == tok.specials.extract
    assert seq[-2 - len(tok.encode(short)) :] == [tok.specials.delimiter, *tok.encode(short), tok.specials.extract]
    (seq,) = encode(Example(short, long), "entailment", tok, 20)
    assert len(seq) == 20 and seq[1 : 1 + len(tok.encode(short))] == tok.encode(short)  # the shorter part is whole


def test_a_cut_context_is_the_same_for_every_choice(tok):
    """Cut against the longest answer, a long context is one shared beginning, read once per row."""
    context, answers = " ".join(["river"] * 40), ("a lamp", "the old stone tower stood")
    seqs = encode(Example(context, choices=answers), "multiple_choice", tok, 20)
    assert max(len(seq) for seq in seqs) == 20 and all(seq[-1] == tok.specials.extract for seq in seqs)
    (first, short), (second, long) = ((seq[: seq.index(tok.specials.delimiter)], seq) for seq in seqs)
    assert first == second and short[len(first) + 1 : -1] == tok.encode(answers[0])
    assert long[len(first) + 1 : -1] == tok.encode(answers[1])
    assert shared(seqs) == len(first)  # the start and the context; the delimiter begins each rest


def test_collate_pads_right_and_masks_padding_out_of_the_lm_targets(tok):
    encoded = [encode(Example("the river"), "classification", tok, 64), encode(Example("a"), "classification", tok, 64)]
    batch = collate(encoded, [1, 0], tok.specials.pad, regression=False)
    n = len(encoded[1][0])
    assert batch.tokens.shape == (2, len(encoded[0][0])) and batch.extract[1, 0] == n - 1 and batch.segments is None
    assert (batch.tokens[1, n:] == tok.specials.pad).all() and (batch.lm_targets[1, n - 1 :] == -1).all()
    assert batch.lm_targets[0, 0] == encoded[0][0][1] and (batch.positions[1, :n] == torch.arange(n)).all()


@pytest.fixture
def gpt(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(preset="debug", vocab_size=tok.vocab_size, n_positions=64))


def test_padding_to_the_longest_sequence_gives_the_scores_of_padding_to_a_fixed_length(tok, gpt):
    encoded = [encode(Example(f"the {t} stood near the old road", "a lamp"), "similarity", tok, 64) for t in TOPICS]
    encoded += [encode(Example("a", "b"), "similarity", tok, 64)]
    model = TaskModel(gpt, "similarity", 1, 0.0).eval()
    longest = collate(encoded, [0.0] * len(encoded), tok.specials.pad, regression=True)
    T = longest.tokens.size(1)
    assert T < 64
    fixed = [t.new_full((len(encoded), 64), fill) for t, fill in
             ((longest.tokens, tok.specials.pad), (longest.positions, 0), (longest.segments, -1))]  # fmt: skip
    for padded, t in zip(fixed, (longest.tokens, longest.positions, longest.segments)):
        padded[:, :T] = t
    with torch.no_grad():
        short, full = model(*longest.inputs()), model(*fixed, longest.extract)
    torch.testing.assert_close(short.scores, full.scores, rtol=1e-5, atol=1e-6)


def test_sequences_sharing_a_row_have_the_states_and_lm_loss_they_have_alone(tok, gpt):
    examples = [Example("the river stood near the old road", choices=("a lamp", "the tower by the sea", "a comet")),
                Example("a", choices=("the river", "b", "the old lamp"))]  # fmt: skip
    encoded = [encode(e, "multiple_choice", tok, 64) for e in examples]
    batch = collate(encoded, [0, 2], tok.specials.pad, regression=False)
    assert batch.tokens.size(1) < sum(len(seq) for seq in encoded[0])  # the context once, not once per choice
    assert [sequences(row(seqs)) for seqs in encoded] == encoded
    model = TaskModel(gpt, "multiple_choice", 1, 0.0).eval()
    with torch.no_grad():
        out = model(*batch.inputs(lm=True))
        seqs = [seq for choices in encoded for seq in choices]
        alone = [gpt(torch.tensor([seq])) for seq in seqs]
    extract = torch.stack([o.hidden[0, len(seq) - 1] for o, seq in zip(alone, seqs)]).view(2, 3, -1)
    torch.testing.assert_close(out.scores, model.head(extract).squeeze(-1), rtol=1e-5, atol=1e-5)
    lm = lm_loss(torch.cat([o.logits[0, :-1] for o in alone]), torch.tensor([t for seq in seqs for t in seq[1:]]))
    assert out.lm_loss.item() == pytest.approx(lm.item(), rel=1e-5)


def test_each_epoch_visits_whole_batches_of_about_one_length_in_an_order_fixed_by_the_seed():
    from eval.finetune import epoch_order

    lengths = np.random.default_rng(0).integers(5, 120, size=1000)
    order = epoch_order(lengths, 16, seed=3, epoch=0, buckets=8)
    assert len(order) == 992 and len(set(order.tolist())) == 992  # 62 whole batches, no example twice
    assert (order == epoch_order(lengths, 16, seed=3, epoch=0, buckets=8)).all()
    assert not (order == epoch_order(lengths, 16, seed=3, epoch=1, buckets=8)).all()
    plain = epoch_order(lengths, 16, seed=3, epoch=0, buckets=0)
    assert (plain == np.random.default_rng([3, 1]).permutation(1000)[:992]).all()  # the plain shuffle

    def padded(o: np.ndarray) -> int:  # tokens in all batches, each padded to its longest
        return int(lengths[o].reshape(-1, 16).max(axis=1).sum() * 16)

    assert padded(order) < 0.7 * padded(plain)


def test_similarity_head_sums_both_orders_and_multiple_choice_scores_each_choice(tok, gpt):
    sim = TaskModel(gpt, "similarity", 2, 0.0).eval()  # no dropout: the two orders must agree exactly
    batch = collate([encode(Example("the river", "a lamp"), "similarity", tok, 64)] * 3, [0, 1, 1],
                    tok.specials.pad, regression=False)  # fmt: skip
    out = sim(*batch.inputs(lm=True))
    assert out.scores.shape == (3, 2) and out.lm_loss.ndim == 0
    swapped = sim(*batch._replace(extract=batch.extract.flip(1)).inputs()).scores
    assert torch.allclose(out.scores, swapped, atol=1e-5)  # order-free
    loss(out, batch, regression=False, lm_coef=0.5).backward()
    assert sim.head.weight.grad.abs().sum() > 0 and gpt.tokens_embed.weight.grad.abs().sum() > 0

    mc = TaskModel(gpt, "multiple_choice", 1, 0.0)
    example = Example("the river", choices=("a lamp", "the tower", "a comet"))
    batch = collate([encode(example, "multiple_choice", tok, 64)] * 2, [2, 0], tok.specials.pad, regression=False)
    out = mc(*batch.inputs())
    assert out.scores.shape == (2, 3)
    task_loss(out.scores, batch.labels, regression=False).backward()
    assert mc.head.weight.grad.abs().sum() > 0


def test_the_auxiliary_lm_loss_is_added_with_its_weight(tok, gpt):
    model = TaskModel(gpt, "classification", 2, 0.0).eval()
    examples = [encode(Example(text), "classification", tok, 64) for text in ("the river stood still", "a lamp")]
    batch = collate(examples, [0, 1], tok.specials.pad, regression=False)  # the second is padded
    out = model(*batch.inputs(lm=True))
    task = task_loss(out.scores, batch.labels, regression=False)
    # The head projects only positions with a next token; the loss is the one over every position.
    lm = lm_loss(gpt(batch.tokens).logits, batch.lm_targets)
    assert out.lm_loss.item() == pytest.approx(lm.item(), rel=1e-6)
    assert model(*batch.inputs()).lm_loss is None  # no targets, no LM head
    assert loss(out, batch, False, 0.0).item() == pytest.approx(task.item())
    assert loss(out, batch, False, 0.5).item() == pytest.approx(task.item() + 0.5 * lm.item())
    regression = TaskModel(gpt, "similarity", 1, 0.0)
    scored = collate([encode(Example("a", "b"), "similarity", tok, 64)], [3.5], tok.specials.pad, regression=True)
    out = regression(*scored.inputs())
    assert task_loss(out.scores, scored.labels, True).item() == pytest.approx((out.scores.item() - 3.5) ** 2, rel=1e-5)


def test_metrics_match_hand_computed_values():
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    assert accuracy(pred, gold) == pytest.approx(100 * 4 / 6)
    assert f1(pred, gold) == pytest.approx(100 * 2 * 2 / (3 + 3))  # tp 2, predicted 3, gold 3
    assert mcc(pred, gold) == pytest.approx(100 * (2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert mcc([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction carries no information
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(100.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-100.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(100.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(100 * 0.8660254, rel=1e-6)  # ties take mean ranks
    glue = glue_average({"mrpc": {"f1": 80, "accuracy": 70}, "stsb": {"pearson": 90, "spearman": 80},
                         "mnli_m": {"accuracy": 80}, "mnli_mm": {"accuracy": 70}, "rte": {"accuracy": 60}})  # fmt: skip
    assert glue == (pytest.approx((75 + 85 + 75 + 60) / 4), ["mnli", "mrpc", "rte", "stsb"])
    assert glue_average({"proxy_next": {"accuracy": 50}}) is None


def write_checkpoint(folder: Path, tok, cfg: ModelConfig) -> Path:
    """A step folder as pretraining writes it: job, fp32 weights, tokenizer."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(GPT(cfg).state_dict(), folder / "model.pt")
    (folder / "checkpoint.json").write_text(json.dumps({"step": 0, "job": {"model": cfg.model_dump(mode="json")}}))
    tok.save(folder / "tokenizer")
    return folder


def test_finetune_on_a_proxy_task_beats_chance_with_and_without_pretraining(tok, tmp_path):
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    texts = documents(copies=2)
    pq.write_table(
        pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), data / "val" / "part-00000.parquet"
    )
    cfg = ModelConfig(preset="debug", vocab_size=tok.vocab_size, n_positions=64, dropout=0.0)
    checkpoint = write_checkpoint(tmp_path / "step-00000000", tok, cfg)
    ecfg = EvalConfig(tasks=[{"name": "proxy_shuffle"}], lr=1e-3, batch_size=16, micro_batch=8, epochs=10,
                      ablations=["no_pretrain"])  # fmt: skip
    summary = run_eval(ecfg, checkpoint, data, tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "proxy_shuffle" / "results.json").read_text())
    assert results["splits"]["proxy_shuffle"]["split"] == "dev" and results["train"]["n"] == 384
    assert results["checkpoint"]["sha256"] and [r["variant"] for r in results["runs"]] == ["full", "no_pretrain"]
    assert [r["lm_coef"] for r in results["runs"]] == [0.5, 0.5] and not results["runs"][1]["pretrained"]
    for variant in ("full", "no_pretrain"):
        assert summary["tasks"]["proxy_shuffle"][variant]["proxy_shuffle"]["accuracy"]["mean"] > 75.0, summary
    full, random = (summary["tasks"]["proxy_shuffle"][v]["proxy_shuffle"]["accuracy"]["mean"]
                    for v in ("full", "no_pretrain"))  # fmt: skip
    notes = [block.text for block in results_section(tmp_path / "eval") if block.kind == "p"]
    assert f"Pretrained minus random weights, in points: proxy_shuffle {full - random:+.1f} (spread 0.0)." in notes


def test_model_selection_scores_the_epoch_best_on_a_slice_of_train(tok, caplog):
    from eval.finetune import Encoded, finetune
    from eval.tasks import get_task
    from training.run import init_process

    device = init_process()
    task = get_task("proxy_shuffle")
    examples = [Example(s.format(t=t), label=1) for t in TOPICS for s in SENTENCES]
    examples += [Example(" ".join(reversed(e.text.split())), label=0) for e in examples]
    data = Encoded(task, examples, tok, 64)
    cfg = EvalConfig(lr=1e-3, batch_size=16, micro_batch=16, epochs=3, validation_fraction=0.25)
    cfg_model = ModelConfig(preset="debug", vocab_size=tok.vocab_size, n_positions=64)
    with caplog.at_level("INFO", logger="eval.finetune"):
        scores = finetune(task, GPT(cfg_model), data, {"dev": data}, cfg, seed=0, lm_coef=0.5, device=device)
    assert [r.message.split(":")[0] for r in caplog.records if "validation" in r.message] == [
        f"proxy_shuffle seed 0 epoch {e}" for e in (1, 2, 3)]  # fmt: skip
    assert 0 <= scores["dev"]["accuracy"] <= 100
