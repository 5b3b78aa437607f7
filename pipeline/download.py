"""Download files once into a cache, resuming interrupted transfers and checking sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A URL could not be fetched, or its content does not match the expected checksum."""


def cached_path(url: str, cache_dir: str | Path) -> Path:
    """Where a URL is kept: one file per URL, named for people and made unique by a hash."""
    name = Path(urlparse(url).path).name or "index"
    return Path(cache_dir).expanduser() / "downloads" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def fetch(url: str, cache_dir: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """The local path of `url`, downloading it (or the part not yet downloaded) when needed."""
    dest = cached_path(url, cache_dir)
    if dest.exists():
        _check(dest, url, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset > 0 and response.status == 206
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part already holds the whole file
            pass
        else:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from None
    try:
        _check(part, url, sha256)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _check(path: Path, url: str, sha256: str | None) -> None:
    if not sha256:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    if digest.hexdigest() != sha256.lower():
        raise DownloadError(f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}")
