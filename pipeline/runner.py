"""The stage runner: content-addressed outputs, manifests written last, skip when complete.

A stage reads its config and its upstream stages' outputs and writes one folder,
`<run_dir>/<stage>/<key>/`, where `key` hashes the stage's version, the config fields that change
its output, and the content digests of its inputs. `manifest.json` is written last, through a temp
file and a rename, so a folder without it was interrupted and never counts as done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Packages whose versions are recorded in every manifest, when installed.
RECORDED_PACKAGES = ("gpt1", "torch", "deepspeed", "ray", "pyarrow", "tokenizers", "numpy")
# Keys the runner writes into a manifest; a stage's own summary must not use them.
RUNNER_KEYS = frozenset(
    {"stage", "version", "key", "config", "inputs", "files", "digest", "started", "seconds", "versions", "host"}
)


class StageError(RuntimeError):
    """A stage cannot run: a missing input, a stage running elsewhere, a bad summary."""


@dataclass(frozen=True)
class StageContext:
    """What a stage function sees: where to write, and where its inputs are."""

    out_dir: Path
    inputs: Mapping[str, Path]
    log: logging.Logger


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    `fn` writes its output into `ctx.out_dir` and returns a summary (e.g. `{"counts": {...}}`)
    that goes into the manifest. A `resumable` stage finds what an interrupted attempt left in
    its folder and continues; any other stage starts from an empty folder.
    """

    name: str
    config: Mapping[str, BaseModel | Any]
    fn: Callable[[StageContext], dict[str, Any]]
    inputs: tuple[str, ...] = ()
    version: int = 1
    resumable: bool = False


@dataclass
class StageOutcome:
    """How one stage ended: done (ran now), skipped (already complete) or failed."""

    name: str
    status: str
    dir: Path
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)


def hashed_config(value: Any) -> Any:
    """JSON form of a config, without the fields marked `{"hashed": False}` (they never change output)."""
    if isinstance(value, BaseModel):
        out = {}
        for name, info in type(value).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("hashed", True):
                out[name] = hashed_config(getattr(value, name))
        return out
    if isinstance(value, Mapping):
        return {str(k): hashed_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hashed_config(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(stage: Stage, input_digests: Mapping[str, str]) -> str:
    """The hash that names a stage's output folder."""
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": hashed_config(stage.config),
        "inputs": dict(sorted(input_digests.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a completed stage folder, or None if the folder is not complete."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a part."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file, fsync and rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_files(folder: Path) -> list[dict[str, Any]]:
    """Every output file under a folder (but the manifest) with its size and sha256, sorted by path."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST or path.name.startswith("."):
            continue
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return files


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


@contextlib.contextmanager
def _exclusive(lock_path: Path, stage: str) -> Iterator[None]:
    """Hold a lock so two processes never write the same stage folder at once. On a filesystem
    without locks (some NFS and FUSE mounts) the stage runs unlocked, with a warning."""
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(f"stage {stage} is being written by another process ({lock_path})") from None
        except OSError as e:
            log.warning("%s: cannot lock %s (%s); run one writer of this stage at a time", stage, lock_path,
                        e.strerror or e)  # fmt: skip
        yield


class Runner:
    """Runs stages in order under one run folder and keeps `stages.json` up to date."""

    def __init__(self, run_dir: Path, force: set[str] | frozenset[str] = frozenset()):
        self.run_dir = Path(run_dir)
        self.force = set(force)
        self.done: dict[str, StageOutcome] = {}
        self.index_path = self.run_dir / "stages.json"

    def run(self, stages: list[Stage], until: str | None = None) -> list[StageOutcome]:
        """Run (or skip) each stage in order, stopping after `until` when given."""
        names = [s.name for s in stages]
        unknown = sorted((({until} if until else set()) | self.force) - set(names))
        if unknown:
            raise StageError(f"unknown stage {', '.join(unknown)}; stages: {', '.join(names)}")
        outcomes = []
        for stage in stages:
            outcomes.append(self.run_stage(stage))
            if stage.name == until:
                break
        return outcomes

    def complete(self, stages: list[Stage]) -> str | None:
        """Take every stage of `stages` that is already complete as done, in order, running none (so
        nothing is read but manifests: no network, no Ray); the name of the first that is not, or None."""
        for stage in stages:
            folder = self.folder(stage)
            manifest = read_manifest(folder)
            if manifest is None:
                return stage.name
            self._record(StageOutcome(stage.name, "skipped", folder, 0.0, manifest))
        return None

    def folder(self, stage: Stage) -> Path:
        """Where `stage` writes, given the outputs of the stages it reads (which must have run)."""
        digests = {name: self._input(stage, name)[1]["digest"] for name in stage.inputs}
        return self.run_dir / stage.name / stage_key(stage, digests)

    def run_stage(self, stage: Stage) -> StageOutcome:
        inputs = {name: self._input(stage, name) for name in stage.inputs}
        folder = self.folder(stage)
        key = folder.name
        folder.parent.mkdir(parents=True, exist_ok=True)

        manifest = read_manifest(folder)
        if manifest is not None and stage.name not in self.force:
            log.info("%s: skipped, complete in %s", stage.name, folder)
            return self._record(StageOutcome(stage.name, "skipped", folder, 0.0, manifest))

        with _exclusive(folder.parent / f".{key}.lock", stage.name):
            manifest = read_manifest(folder)  # another process may have finished it before we held the lock
            if manifest is not None and stage.name not in self.force:
                log.info("%s: skipped, completed by another process in %s", stage.name, folder)
                return self._record(StageOutcome(stage.name, "skipped", folder, 0.0, manifest))
            try:
                manifest = self._execute(stage, folder, key, inputs)
            except BaseException:
                self._record(StageOutcome(stage.name, "failed", folder))
                raise
        outcome = StageOutcome(stage.name, "done", folder, manifest["seconds"], manifest)
        log.info("%s: done in %.1fs -> %s", stage.name, outcome.seconds, folder)
        return self._record(outcome)

    def _input(self, stage: Stage, name: str) -> tuple[Path, dict[str, Any]]:
        upstream = self.done.get(name)
        if upstream is None or upstream.status == "failed":
            raise StageError(f"stage {stage.name} needs the output of stage {name}, which has not run")
        return upstream.dir, upstream.manifest

    def _execute(
        self, stage: Stage, folder: Path, key: str, inputs: dict[str, tuple[Path, dict[str, Any]]]
    ) -> dict[str, Any]:
        (folder / MANIFEST).unlink(missing_ok=True)
        if folder.exists() and not (stage.resumable and stage.name not in self.force):
            shutil.rmtree(folder)
        elif folder.exists():
            log.info("%s: resuming what an interrupted run left in %s", stage.name, folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".{MANIFEST}.*.tmp"):
            stale.unlink()

        log.info("%s: running -> %s", stage.name, folder)
        started, t0 = time.time(), time.perf_counter()
        ctx = StageContext(folder, {n: p for n, (p, _) in inputs.items()}, logging.getLogger(f"gpt1.{stage.name}"))
        summary = stage.fn(ctx) or {}
        clash = RUNNER_KEYS & summary.keys()
        if clash:
            raise StageError(f"stage {stage.name} returned reserved manifest keys: {sorted(clash)}")
        files = list_files(folder)
        manifest = {
            "stage": stage.name,
            "version": stage.version,
            "key": key,
            "config": hashed_config(stage.config),
            "inputs": {n: {"dir": str(p), "digest": m["digest"]} for n, (p, m) in inputs.items()},
            **summary,
            "files": files,
            "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.perf_counter() - t0, 3),
            "versions": versions(),
            "host": socket.gethostname(),
        }
        write_json_atomic(folder / MANIFEST, manifest)
        return manifest

    def _record(self, outcome: StageOutcome) -> StageOutcome:
        """Remember an outcome and rewrite stages.json (atomically) so others can find outputs."""
        self.done[outcome.name] = outcome
        index = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        index[outcome.name] = {
            "dir": str(outcome.dir),
            "status": outcome.status,
            "seconds": outcome.seconds,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.index_path, index)
        return outcome
