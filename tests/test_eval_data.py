"""Task loaders on files written here in each benchmark's own format, hub datasets in their Parquet
layout, and the proxy tasks built from validation documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.config import EvalConfig
from eval.proxy import proxy_examples
from eval.tasks import TASKS, Example, TaskDataError, get_task, load_split

MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_cola_has_no_header_and_keeps_quotes_as_text(tmp_path):
    write(tmp_path / "train.tsv", 'gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n'
                                  'gj04\t0\t*\tThe "more he reads, the book.\n')  # fmt: skip
    examples = load_split(get_task("cola"), "train", data_dir=tmp_path)
    assert examples == [Example("The sailors rode the breeze clear of the rocks.", label=1),
                        Example('The "more he reads, the book.', label=0)]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "header", "row", "expected"),
    [
        ("sst2", "sentence\tlabel", "it 's a charming journey \t1", Example("it 's a charming journey ", label=1)),
        ("mrpc", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t702876\t702977\tHe said.\tHe says.",
         Example("He said.", "He says.", label=1)),
        ("qqp", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "201359\t303345\t303346\tWhy?\tHow?\t0",
         Example("Why?", "How?", label=0)),
        ("stsb", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
         "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man plays.\tA man is playing.\t4.750",
         Example("A man plays.", "A man is playing.", label=4.75)),
        ("qnli", "index\tquestion\tsentence\tlabel", "0\tWhat?\tThis.\tnot_entailment",
         Example("What?", "This.", label=1)),
        ("rte", "index\tsentence1\tsentence2\tlabel", "0\tA cat sat.\tA cat exists.\tentailment",
         Example("A cat sat.", "A cat exists.", label=0)),
        ("wnli", "index\tsentence1\tsentence2\tlabel", "0\tI put it.\tIt was put.\t1",
         Example("I put it.", "It was put.", label=1)),
        ("mnli", MNLI_HEADER, "0\t31193\t31193n\tgovernment\t( ( x ) )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually "
         "cream skimming.\tProduct and geography.\tneutral\tneutral", Example("Conceptually cream skimming.",
         "Product and geography.", label=1)),
    ],
)  # fmt: skip
def test_glue_tsv_with_its_header(tmp_path, task, header, row, expected):
    write(tmp_path / "train.tsv", f"{header}\n{row}\n")
    assert load_split(get_task(task), "train", data_dir=tmp_path) == [expected]


def test_mnli_is_scored_on_matched_and_mismatched_dev(tmp_path):
    row = "0\t1\t1n\tfiction\t-\t-\t-\t-\tA.\tB.\tcontradiction\tcontradiction\n"
    write(tmp_path / "dev_matched.tsv", f"{MNLI_HEADER}\n{row}")
    write(tmp_path / "dev_mismatched.tsv", f"{MNLI_HEADER}\n{row}{row}")
    task = get_task("mnli")
    assert task.scores == {"mnli_m": "dev_matched", "mnli_mm": "dev_mismatched"}
    assert [len(load_split(task, split, data_dir=tmp_path)) for split in task.scores.values()] == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", "dev.tsv:3: expected 4 tab-separated "
         "fields, got 3"),
        ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "dev.tsv:2: label 'maybe' is not one of entailment, "
         "not_entailment"),
        ("index\tpremise\thypothesis\tlabel\n", "dev.tsv:1: GLUE rte header lacks sentence1, sentence2"),
    ],
)  # fmt: skip
def test_a_malformed_glue_file_names_the_file_and_line(tmp_path, text, message):
    write(tmp_path / "dev.tsv", text)
    with pytest.raises(TaskDataError) as error:
        load_split(get_task("rte"), "dev", data_dir=tmp_path)
    assert str(error.value) == f"{tmp_path}/{message}"


def test_a_missing_file_or_folder_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=f"^{tmp_path}/dev.tsv: file not found$"):
        load_split(get_task("rte"), "dev", data_dir=tmp_path)
    with pytest.raises(TaskDataError, match="rte data_dir not found"):
        load_split(get_task("rte"), "dev", data_dir=tmp_path / "nowhere")


def test_snli_jsonl_skips_the_no_consensus_label_and_names_a_bad_line(tmp_path):
    rows = [{"gold_label": "neutral", "sentence1": "A man.", "sentence2": "A person."},
            {"gold_label": "-", "sentence1": "Split.", "sentence2": "Votes."},
            {"gold_label": "contradiction", "sentence1": "Day.", "sentence2": "Night."}]  # fmt: skip
    write(tmp_path / "snli_1.0_dev.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert load_split(get_task("snli"), "dev", data_dir=tmp_path) == [
        Example("A man.", "A person.", label=1), Example("Day.", "Night.", label=2)]  # fmt: skip
    write(tmp_path / "snli_1.0_train.jsonl", json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(TaskDataError, match=r"snli_1.0_train.jsonl:2: not an SNLI record"):
        load_split(get_task("snli"), "train", data_dir=tmp_path)


def test_scitail_tsv_format(tmp_path):
    write(tmp_path / "tsv_format" / "scitail_1.0_dev.tsv", "Plants make food.\tPlants feed themselves.\tentails\n"
                                                           "Rocks are hard.\tRocks are soft.\tneutral\n")  # fmt: skip
    assert [e.label for e in load_split(get_task("scitail"), "dev", data_dir=tmp_path)] == [0, 1]


def test_race_reads_one_json_article_per_file_by_level(tmp_path):
    article = {"article": "Tom has a dog.", "questions": ["Who has a dog?", "What does Tom have?"],
               "options": [["Tom", "Ann", "Bob", "Sue"], ["a cat", "a dog", "a fish", "a bird"]],
               "answers": ["A", "B"], "id": "middle1.txt"}  # fmt: skip
    write(tmp_path / "dev" / "middle" / "1.txt", json.dumps(article))
    write(
        tmp_path / "dev" / "high" / "2.txt",
        json.dumps(
            {**article, "questions": article["questions"][:1], "options": article["options"][:1], "answers": ["C"]}
        ),
    )
    task = get_task("race")
    middle = load_split(task, "dev/middle", data_dir=tmp_path)
    assert middle[1] == Example("Tom has a dog.\nWhat does Tom have?", choices=("a cat", "a dog", "a fish", "a bird"),
                                label=1)  # fmt: skip
    assert [len(load_split(task, split, data_dir=tmp_path)) for split in task.scores.values()] == [2, 1, 3]
    write(tmp_path / "dev" / "high" / "3.txt", '{"article": "x",\n "questions": [}')
    with pytest.raises(TaskDataError, match=r"dev/high/3.txt:2: invalid JSON"):
        load_split(task, "dev/high", data_dir=tmp_path)


def test_story_cloze_trains_on_val_and_scores_test(tmp_path):
    header = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,"
              "RandomFifthSentenceQuiz2,AnswerRightEnding\n")  # fmt: skip
    row = 'b929f263,Rick grew up.,He joined a gang.,"He got shot, once.",He quit.,He is happy.,He joins again.,1\n'
    write(tmp_path / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv", header + row)
    write(tmp_path / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv", header + row.replace(",1\n", ",2\n"))
    task = get_task("story_cloze")
    (val,) = load_split(task, task.train, data_dir=tmp_path)
    assert val == Example("Rick grew up. He joined a gang. He got shot, once. He quit.",
                          choices=("He is happy.", "He joins again."), label=0)  # fmt: skip
    assert load_split(task, task.scores["story_cloze"], data_dir=tmp_path)[0].label == 1


def test_hub_datasets_are_read_from_their_parquet_layout(tmp_path):
    """A dataset folder laid out as nyu-mll/glue is on the hub (README configs, Parquet per split)."""
    write(tmp_path / "README.md", "---\nconfigs:\n- config_name: rte\n  data_files:\n  - split: train\n"
          "    path: rte/train-*\n  - split: validation\n    path: rte/validation-*\n---\n")  # fmt: skip
    (tmp_path / "rte").mkdir()
    table = pa.table({"sentence1": ["A cat sat.", "x"], "sentence2": ["A cat exists.", "y"], "label": [0, -1],
                      "idx": [0, 1]})  # fmt: skip
    for split in ("train", "validation"):
        pq.write_table(table, tmp_path / "rte" / f"{split}-00000-of-00001.parquet")
    examples = load_split(get_task("rte"), "dev", hub=str(tmp_path))
    assert examples == [Example("A cat sat.", "A cat exists.", label=0)]  # the unlabelled row is left out
    with pytest.raises(TaskDataError, match="cannot open hub dataset"):
        load_split(get_task("rte"), "dev", hub=str(tmp_path / "missing"))


def test_task_configs_are_checked_when_read():
    with pytest.raises(ValueError, match="unknown task 'rtee'"):
        EvalConfig(tasks=[{"name": "rtee", "hub": "nyu-mll/glue"}])
    with pytest.raises(ValueError, match="give exactly one of data_dir"):
        EvalConfig(tasks=[{"name": "rte"}])
    with pytest.raises(ValueError, match="story_cloze is not on the hub"):
        EvalConfig(tasks=[{"name": "story_cloze", "hub": "x/y"}])
    with pytest.raises(ValueError, match="not a multiple of micro_batch"):
        EvalConfig(batch_size=32, micro_batch=5)


def test_every_task_has_a_kind_a_metric_and_a_scored_split():
    for task in TASKS.values():
        assert task.kind in ("classification", "entailment", "similarity", "multiple_choice")
        assert task.scores and task.metric


@pytest.fixture(scope="module")
def val_docs(tmp_path_factory) -> Path:
    """A data-stage folder whose val split holds 10 documents of 6 sentences."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "val").mkdir()
    topics = ["river", "engine", "garden", "violin", "harbour", "glacier", "market", "comet", "forest", "tower"]
    texts = [" ".join(f"The {t} number {i} stands near the old {t} by the road today." for i in range(6))
             for t in topics]  # fmt: skip
    pq.write_table(pa.table({"id": [str(i) for i in range(10)], "text": texts}), folder / "val" / "part-00000.parquet")
    return folder


def test_proxy_tasks_are_deterministic_balanced_and_split_by_document(val_docs):
    for name in ("proxy_shuffle", "proxy_continue", "proxy_samedoc", "proxy_next", "proxy_order"):
        train, dev = (proxy_examples(name, val_docs, split) for split in ("train", "dev"))
        assert train == proxy_examples(name, val_docs, "train")
        texts = {e.text for e in dev}
        assert not texts & {e.text for e in train}  # dev documents are not in train
        if name not in ("proxy_next", "proxy_order"):  # one positive and one negative per sentence
            assert sum(e.label for e in train) * 2 == len(train)
    (mc,) = proxy_examples("proxy_next", val_docs, "dev")[:1]
    assert len(mc.choices) == 4 and mc.choices[mc.label].split()[1] == mc.text.split()[1]  # same topic word


def test_proxy_order_choices_are_the_next_sentence_and_three_other_orderings_of_its_words(val_docs):
    examples = proxy_examples("proxy_order", val_docs, "train")
    assert len(examples) == 8 * 5  # 8 train documents, each sentence after the first
    sentence = re.compile(r"The (\w+) number (\d) stands near the old \1 by the road today\.")
    for e in examples:
        answer, context = sentence.fullmatch(e.choices[e.label]), sentence.fullmatch(e.text)
        assert answer and context and answer[1] == context[1] and int(answer[2]) == int(context[2]) + 1
        words = {tuple(sorted(choice.split())) for choice in e.choices}
        assert len(set(e.choices)) == 4 and words == {tuple(sorted(e.choices[e.label].split()))}
    assert len({e.label for e in examples}) == 4  # the answer is not always in one place
