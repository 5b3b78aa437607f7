"""The run configuration: one typed section per component, read from YAML plus `--set` overrides.

Loading has no side effects: it reads one file and validates it, nothing more. Every problem found
is reported at once, one line each, naming the file (or `--set`) and the dotted key.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eval.config import EvalConfig, ReportConfig
from pipeline.config import DataConfig, ShardsConfig
from tokenizer.config import TokenizerConfig
from training.config import DeepSpeedConfig, ModelConfig, TrainConfig


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class RunConfig(BaseModel):
    """Where a run writes and how it is seeded."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    """Run name; outputs go to <out_dir>/<name>/."""
    out_dir: Path = Path("runs")
    """Folder holding every run."""
    seed: int = Field(1234, ge=0)
    """Seed for every random choice of the run."""


class Config(BaseModel):
    """A whole run: each component reads only its own section."""

    model_config = ConfigDict(extra="forbid")

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _context_fits_positions(self) -> Config:
        if self.shards.seq_len > self.model.n_positions:
            raise ValueError(
                f"shards.seq_len ({self.shards.seq_len}) is longer than the position table "
                f"model.n_positions ({self.model.n_positions})"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return self.run.out_dir / self.run.name


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `key.path=value` overrides and validate the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of sections at the top level"])
    overridden = [_apply_override(raw, item) for item in overrides]
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(err, path, overridden) for err in e.errors()]) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, every default spelled out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_hash(cfg: Config) -> str:
    """A short hash of the resolved config: which config a report or a rendered job came from."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]


def _apply_override(raw: dict[str, Any], item: str) -> str:
    """Set `a.b.c=value` in the raw mapping (value parsed as YAML); returns the dotted key."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4"])
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError([f"--set {key}: {'.'.join(parts[:i])} has no item {part!r}"])
            index: int | str = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                if parts[i + 1].isdigit():
                    raise ConfigError([f"--set {key}: {'.'.join(parts[: i + 1])} has no item {parts[i + 1]!r}"])
                node[part] = {}
        else:
            raise ConfigError([f"--set {key}: {'.'.join(parts[:i])} is not a section"])
        if last:
            node[index] = value
        else:
            node = node[index]
    return key.strip()


def _describe(err: dict[str, Any], path: Path, overridden: list[str]) -> str:
    """One line for one validation error: source, dotted key, what is wrong."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    from_set = any(key == o or key.startswith(o + ".") for o in overridden)
    source = f"{path}: --set" if from_set else str(path)
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        return f"{source}: {key}: unknown key{hint}"
    message = err["msg"].removeprefix("Value error, ")
    if not key:
        return f"{source}: {message}"
    if err["type"] in ("missing", "model_type", "dict_type") or "input" not in err:
        return f"{source}: {key}: {message}"
    return f"{source}: {key}: {message} (got {err['input']!r})"


def _known_keys(loc: list[str]) -> list[str]:
    """The field names at a location of the schema, for 'did you mean' hints."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or part.isdigit():
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        model = _model_in(annotation)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `SourceConfig` or `list[SourceConfig]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None
