"""The local-directory store (``file://``): the embedded default and the unit tests' backend.

Writes go to a temporary file in the target folder and are renamed into place, so a crash
never leaves a half-written key. Files get the permissions of any file this process creates
(0666 less the umask), not the private mode of the temporary file, so a reader running as
another user (a BI tool, a sidecar) can open the state and the diff as the umask allows.
Deleting a folder's last key removes the folder, and its emptied parents, up to the root.
``put_if_absent`` uses a hard link (fails if the name exists) and ``replace_if_match`` holds
an exclusive ``flock`` on a lock file while it compares, so two processes on one machine get
the same guarantees as conditional writes on S3.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from metatide.extractor.core.errors import StorageUnavailableError
from metatide.extractor.storage.base import KeyNotFoundError, ObjectInfo, StoredObject
from metatide.extractor.storage.meter import record_read, record_write


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _process_umask() -> int:
    """The umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # no /proc: set and restore at once
    os.umask(current)
    return current


_FILE_MODE = 0o666 & ~_process_umask()


class LocalStore:
    """A `Store` over a directory; keys are relative paths below it."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def location(self) -> str:
        return f"file://{self._root}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"store key {key!r} must be relative and stay inside the store")
        return self._root / key

    async def get(self, key: str) -> StoredObject:
        stored = await asyncio.to_thread(self._get, key)
        record_read(len(stored.data))
        return stored

    def _get(self, key: str) -> StoredObject:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyNotFoundError(self.location, key) from None
        return StoredObject(data=data, version=_version(data))

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_atomically, key, data)
        record_write(len(data))

    async def put_file(self, key: str, path: Path) -> None:
        await asyncio.to_thread(self._copy_atomically, key, path)
        record_write(path.stat().st_size)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        record_write(len(data))
        return await asyncio.to_thread(self._create, key, data)

    async def replace_if_match(self, key: str, data: bytes, version: str) -> bool:
        record_write(len(data))
        return await asyncio.to_thread(self._swap, key, data, version)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(lambda: list(self._walk(prefix))):
            yield info

    async def delete(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self._delete, keys)

    async def local_file(self, key: str, destination: Path) -> Path:
        """The store's own file (no copy: a committed state file is never rewritten)."""
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise KeyNotFoundError(self.location, key) from None
        record_read(size)
        return path

    def _temporary(self, target: Path) -> tuple[int, Path]:
        """A new temporary file beside `target`, with the mode a created file would get."""
        for attempt in (1, 2):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                handle, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
                os.fchmod(handle, _FILE_MODE)
                return handle, Path(name)
            except FileNotFoundError as exc:
                # A deletion removed the emptied folder between mkdir and mkstemp: once more.
                if attempt == 2:
                    raise self._unwritable(exc) from exc
            except OSError as exc:
                raise self._unwritable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _unwritable(self, exc: OSError) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"cannot write below {self.location}: {exc.strerror}; check the path and its "
            "permissions"
        )

    def _write_atomically(self, key: str, data: bytes) -> None:
        target = self._path(key)
        handle, temporary = self._temporary(target)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, target)

    def _copy_atomically(self, key: str, source: Path) -> None:
        target = self._path(key)
        handle, temporary = self._temporary(target)
        os.close(handle)
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)

    def _create(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        handle, temporary = self._temporary(target)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        try:
            os.link(temporary, target)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink()

    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _swap(self, key: str, data: bytes, version: str) -> bool:
        target = self._path(key)
        with self._locked(target):
            try:
                current = _version(target.read_bytes())
            except FileNotFoundError:
                return False
            if current != version:
                return False
            self._write_atomically(key, data)
            return True

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self._root
        if base.is_file():
            yield ObjectInfo(key=prefix, size=base.stat().st_size)
            return
        for folder, _, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue  # temporary files and locks are not keys
                path = Path(folder) / name
                yield ObjectInfo(
                    key=path.relative_to(self._root).as_posix(), size=path.stat().st_size
                )

    def _delete(self, keys: Sequence[str]) -> None:
        folders = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            self._remove_if_empty(folder)

    def _remove_if_empty(self, folder: Path) -> None:
        """Remove an emptied folder and its emptied parents, never the root itself."""
        while folder != self._root and self._root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone already): its parents are not empty either
                return
            folder = folder.parent
