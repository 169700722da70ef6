"""The adapter store: PEFT LoRA directories of one base model, written atomically.

Layout, under `<data>/adapters/<model>/`:

- `<name>/`: one adapter (`adapter_config.json` + `adapter_model.safetensors`, and
  whatever else its writer saved);
- `.default.json`: the server default, the adapters a request that names none gets;
- `.staging-*`: adapters being written (never listed, never served);
- `.old~<name>~*`: a replaced version while the new one is renamed in.

A writer fills a staging directory, then `install` renames it into place: a crash leaves
either the old adapter or the new one visible, never half of one. Replacing an existing
name is two renames; `recover()` (run when the store is first used) finishes or undoes one
interrupted between them. Other processes (training workers) may write into the same store.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway_schemas.canonical import AdapterRef

from gateway.adapters.names import check_name
from gateway.errors import Conflict, InvalidRequest, NotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_FILE = ".default.json"
MAX_COMPOSED = 16
"""At most this many adapters in one request's composition (Kiln's limit)."""
STALE_STAGING_SECONDS = 3600.0


@dataclass(frozen=True)
class AdapterEntry:
    """What `GET /v1/adapters` shows about one stored adapter."""

    name: str
    has_config: bool
    has_weights: bool
    size_bytes: int
    modified_at: str | None
    files: list[str]


def model_folder(model: str) -> str:
    """A model name as one directory name (`openai/gpt-4o` -> `openai--gpt-4o`)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in model.replace("/", "--"))


class AdapterStore:
    """The adapters of one base model. Thread-safe; every method may block on the disk."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.RLock()
        self._recovered = False

    @classmethod
    def for_model(cls, data_dir: Path, model: str) -> AdapterStore:
        return cls(data_dir / "adapters" / model_folder(model))

    # Reading.

    def names(self) -> list[str]:
        self._ready()
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _is_adapter(p)
        )

    def entries(self) -> list[AdapterEntry]:
        """Every stored adapter; one deleted while the list is read is left out."""
        found = []
        for name in self.names():
            try:
                found.append(self.entry(name))
            except (NotFound, FileNotFoundError):
                continue
        return found

    def entry(self, name: str) -> AdapterEntry:
        path = self.path(name)
        files = sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not p.is_symlink()
        )
        size = sum((path / f).stat().st_size for f in files)
        stamp = (path / WEIGHTS_FILE) if (path / WEIGHTS_FILE).exists() else path
        modified = datetime.fromtimestamp(stamp.stat().st_mtime, UTC)
        return AdapterEntry(
            name=name,
            has_config=(path / CONFIG_FILE).is_file(),
            has_weights=(path / WEIGHTS_FILE).is_file(),
            size_bytes=size,
            modified_at=modified.isoformat().replace("+00:00", "Z"),
            files=files,
        )

    def exists(self, name: str) -> bool:
        self._ready()
        path = self.root / check_name(name)
        return path.is_dir() and _is_adapter(path)

    def path(self, name: str, param: str = "name") -> Path:
        """The directory of adapter `name`; 404 `adapter_not_found` when there is none."""
        self._ready()
        path = self.root / check_name(name, param)
        if not (path.is_dir() and _is_adapter(path)):
            raise NotFound(
                f"There is no adapter `{name}`. Stored adapters: "
                f"{', '.join(f'`{n}`' for n in self.names()) or 'none'}.",
                param=param,
                code="adapter_not_found",
            )
        return path

    def version(self, name: str, param: str = "name") -> tuple[Path, str]:
        """The directory of `name` and its version, which changes whenever `name` is
        replaced (its weights file's identity)."""
        path = self.path(name, param)
        weights = path / WEIGHTS_FILE
        stat = (weights if weights.exists() else path).stat()
        return path, f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"

    # The server default.

    def default(self) -> list[AdapterRef]:
        """The adapters a request that names none is served with (empty: the base model).
        A default adapter deleted behind the store's back is dropped."""
        self._ready()
        try:
            raw = json.loads((self.root / DEFAULT_FILE).read_text())
        except (OSError, ValueError):
            return []
        refs = [AdapterRef(name=str(item["name"]), scale=float(item["scale"])) for item in raw]
        return [ref for ref in refs if self.exists(ref.name)]

    def set_default(self, refs: list[AdapterRef]) -> list[AdapterRef]:
        """Make `refs` the server default (persisted: a restart keeps it)."""
        with self._lock:
            checked = self.resolve(refs, param="adapters")
            self.root.mkdir(parents=True, exist_ok=True)
            data = json.dumps([{"name": r.name, "scale": r.scale} for r in checked])
            partial = self.root / f"{DEFAULT_FILE}.{uuid.uuid4().hex}.partial"
            partial.write_text(data)
            _fsync_file(partial)
            partial.replace(self.root / DEFAULT_FILE)
            _fsync_dir(self.root)
            return checked

    def resolve(self, refs: list[AdapterRef] | None, param: str = "adapters") -> list[AdapterRef]:
        """The adapter set a request runs with: `None` means the server default; each named
        adapter must exist, appear once, and have a finite scale."""
        if refs is None:
            return self.default()
        if len(refs) > MAX_COMPOSED:
            raise InvalidRequest(
                f"At most {MAX_COMPOSED} adapters can be composed; got {len(refs)}.",
                param=param,
                code="invalid_compose_request",
            )
        seen: set[str] = set()
        for ref in refs:
            self.path(ref.name, param)
            if ref.name in seen:
                raise InvalidRequest(
                    f"Adapter `{ref.name}` appears twice in `{param}`.",
                    param=param,
                    code="invalid_compose_request",
                )
            seen.add(ref.name)
            if not math.isfinite(ref.scale):
                raise InvalidRequest(
                    f"The scale of adapter `{ref.name}` must be a finite number.",
                    param=param,
                    code="invalid_compose_request",
                )
        return list(refs)

    # Writing.

    def staging(self) -> Path:
        """A fresh private directory to write an adapter into before `install`."""
        self._ready()
        path = self.root / f".staging-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def install(self, staging: Path, name: str, *, replace: bool = False) -> Path:
        """Rename a filled `staging` directory into place as `name`. An existing `name` is a
        409 unless `replace`, which swaps versions (requests already running keep theirs)."""
        check_name(name)
        if not _is_adapter(staging):
            raise InvalidRequest(
                f"An adapter needs `{CONFIG_FILE}` and `{WEIGHTS_FILE}`.",
                code="adapter_import_invalid",
            )
        _fsync_tree(staging)
        target = self.root / name
        with self._lock:
            if target.exists() and not replace:
                raise Conflict(
                    f"An adapter named `{name}` already exists.", code="adapter_already_exists"
                )
            old = None
            if target.exists():
                old = self.root / f".old~{name}~{uuid.uuid4().hex}"
                target.rename(old)
            staging.rename(target)
            _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def delete(self, name: str) -> list[str]:
        """Remove `name` and its `<name>-checkpoint-*` siblings; 409 while it is part of
        the server default. Returns the names removed."""
        with self._lock:
            self.path(name)
            if any(ref.name == name for ref in self.default()):
                raise Conflict(
                    f"Adapter `{name}` is the server default; unload it first.",
                    code="adapter_active",
                )
            removed = [name] + [
                n for n in self.names() if n.startswith(f"{name}-checkpoint-") and n != name
            ]
            for victim in removed:
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                (self.root / victim).rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            _fsync_dir(self.root)
            return removed

    def discard(self, staging: Path) -> None:
        """Remove a staging directory that will not be installed."""
        if staging.parent == self.root and staging.name.startswith(".staging-"):
            shutil.rmtree(staging, ignore_errors=True)

    # Recovery.

    def _ready(self) -> None:
        if not self._recovered:
            with self._lock:
                if not self._recovered:
                    self.recover()
                    self._recovered = True

    def recover(self) -> None:
        """Finish what a crash interrupted: an `.old~` version whose replacement never
        arrived goes back in place; leftover old versions, trash and stale staging go."""
        if not self.root.is_dir():
            return
        now = time.time()
        for entry in self.root.iterdir():
            if entry.name.startswith(".old~"):
                name = entry.name.split("~")[1]
                if not (self.root / name).exists():
                    entry.rename(self.root / name)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(".trash-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(".staging-") and entry.is_dir():
                if now - entry.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.endswith(".partial"):
                entry.unlink(missing_ok=True)


def _is_adapter(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some platforms cannot open directories
        _fsync_file(path)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _fsync_file(path)
    _fsync_dir(root)
