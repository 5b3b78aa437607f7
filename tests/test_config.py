"""Config loading: shipped files, overrides, and every kind of error a user can make."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.config import ConfigError, dump_config, load_config
from tests.conftest import CONFIGS
from training.config import PRESETS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path):
    cfg = load_config(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_paper_config_matches_the_paper():
    cfg = load_config(CONFIGS / "gpt1.yaml")
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.n_positions, m.dropout) == (12, 12, 768, 512, 0.1)
    assert (t.global_batch, t.lr, t.warmup_steps, t.weight_decay, t.epochs) == (64, 2.5e-4, 2000, 0.01, 100)
    assert cfg.tokenizer.merges == 40_000 and cfg.shards.seq_len == 512
    assert (cfg.eval.lr, cfg.eval.batch_size, cfg.eval.epochs, cfg.eval.lm_coef) == (6.25e-5, 32, 3, 0.5)


def test_paper_config_runs_on_one_to_eight_gpus_with_fp32_accumulation():
    from training.engine import deepspeed_config

    cfg = load_config(CONFIGS / "gpt1.yaml")
    for gpus in (1, 2, 4, 8):
        config = deepspeed_config(cfg.train, cfg.deepspeed, gpus, "bf16")
        assert config["train_batch_size"] == 64 and config["data_types"] == {"grad_accum_dtype": "fp32"}
        assert config["zero_optimization"]["overlap_comm"] is True


def test_empty_file_gives_all_defaults(write_config):
    cfg = load_config(write_config(""))
    assert cfg.model.n_layer == 12 and cfg.run.name == "default"


def test_override_sets_typed_values(write_config):
    cfg = load_config(
        write_config("model: {preset: debug}\ndata: {sources: [{name: docs, paths: [a.txt]}]}\n"),
        ["model.n_layer=3", "train.lr=1e-3", "train.compile=true", "data.sources.0.limit=10", "run.name=x"],
    )
    assert cfg.model.n_layer == 3 and cfg.train.lr == 1e-3 and cfg.train.compile is True
    assert cfg.data.sources[0].limit == 10 and cfg.run.name == "x"


def test_override_creates_missing_sections(write_config):
    cfg = load_config(write_config(""), ["eval.tasks=[{name: rte, data_dir: glue/RTE}]"])
    assert cfg.eval.tasks[0].name == "rte" and cfg.eval.tasks[0].data_dir == "glue/RTE"


def test_preset_fills_fields_and_explicit_fields_win(write_config):
    cfg = load_config(write_config("model: {preset: debug, n_layer: 5}\n"))
    assert cfg.model.n_layer == 5
    assert cfg.model.n_embd == PRESETS["debug"]["n_embd"]


def problems(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("", ["model.n_layer=abc"], "--set: model.n_layer: Input should be a valid integer"),
        ("train: {micro_batch: -4}\n", [], "train.micro_batch: Input should be greater than 0 (got -4)"),
        ("model: {n_head: 5}\n", [], "model: Value error, n_embd (768) must be divisible by n_head (5)"),
        ("model: {preset: huge}\n", [], "unknown model preset 'huge'; known presets: gpt1, mini, debug"),
        ("shards: {seq_len: 1024}\n", [], "shards.seq_len (1024) is longer than the position table"),
        ("train: {global_batch: 4, micro_batch: 8}\n", [], "micro_batch (8) is larger than global_batch (4)"),
        ("trian: {lr: 1}\n", [], "trian: unknown key; did you mean 'train'?"),
        ("data: {sources: [{name: a, kind: ftp}]}\n", [], "data.sources.0.kind: Input should be 'local'"),
        ("data: {sources: [{name: a, paht: x}]}\n", [], "data.sources.0.paht: unknown key; did you mean 'paths'?"),
        ("eval: {ablations: [no_lstm]}\n", [], "eval.ablations.0: Input should be 'no_pretrain' or 'no_aux'"),
        ("run: {name: 'a b'}\n", [], "run.name: String should match pattern"),
        ("tokenizer: {style: wordpiece}\n", [], "tokenizer.style: Input should be 'gpt1' or 'bytelevel'"),
        ("deepspeed: {zero_stage: 4}\n", [], "deepspeed.zero_stage: Input should be less than or equal to 3"),
        ("model: 3\n", [], "model: Input should be a valid dictionary"),
    ],
)
def test_invalid_value_is_one_line_naming_file_and_key(write_config, text, overrides, expected):
    path = write_config(text)
    found = problems(path, overrides)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: ")
    assert expected.replace("Value error, ", "") in found[0]
    assert "\n" not in found[0]


def test_all_problems_are_reported_together(write_config):
    found = problems(write_config("train: {lr: -1, micro_batch: 0}\nmodle: {}\n"))
    assert len(found) == 3
    assert any("train.lr" in p for p in found) and any("train.micro_batch" in p for p in found)
    assert any("modle: unknown key" in p for p in found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [\n", "invalid YAML at line 2"),
        ("- 1\n- 2\n", "expected a mapping of sections at the top level"),
    ],
)
def test_unreadable_file_is_one_clear_error(write_config, text, expected):
    path = write_config(text)
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}: ") and expected in found[0]


def test_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert problems(path) == [f"{path}: not a UTF-8 text file"]


def test_missing_file_is_a_clear_error(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_layer", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("data.sources.7.limit=1", "data.sources has no item '7'"),
        ("run.name.x=1", "run.name is not a section"),
    ],
)
def test_malformed_override_is_a_clear_error(write_config, override, expected):
    path = write_config("run: {name: a}\n")
    found = problems(path, [override])
    assert len(found) == 1 and expected in found[0]
