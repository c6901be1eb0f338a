"""What a result belongs to: the source that made it, and the lock that keeps one computation per run.

The run identity (the hash in ``<method>-<hash>/``) covers the resolved configuration, the data
checksums with their verified flag (``Task.data_record``), and :func:`code_digest`: a SHA-256 over
the source files that define the run. Those are the method's module (each part's for a
composition ``cbp+l2``), the task's module and :mod:`plastibench.engine`, with every module they
import transitively (found by reading their ``import`` statements with :mod:`ast`) inside
``plastibench`` or the root module's own top-level package, and the ``__init__`` of every package
on the way. Files enter the digest by module path (``plastibench/methods/cbp.py``), not by where
they lie on disk, so two checkouts of the same code give the same digest.

:func:`run_lock` holds ``<run_dir>/.lock`` (``fcntl.flock``) while a run is checked, computed or
cleared: a second process asking for the same configuration waits for the first, then reads its
result. The lock file is never deleted (deleting it would let two processes lock two files).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

ENGINE_MODULE = "plastibench.engine"


def _spec(name: str):
    """The module spec of ``name``, or None when it is not an importable module."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        return module.__spec__
    parent = name.rpartition(".")[0]
    if parent and parent in sys.modules and not hasattr(sys.modules[parent], "__path__"):
        return None  # ``from module import function``
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def _source(name: str) -> tuple[str, Path] | None:
    """(module path inside its package tree, file) of module ``name``; None without a .py source."""
    spec = _spec(name)
    origin = getattr(spec, "origin", None) if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    package = spec.submodule_search_locations is not None
    key = name.replace(".", "/") + ("/__init__.py" if package else ".py")
    return key, Path(origin)


@functools.lru_cache(maxsize=512)
def _statements(source: bytes, filename: str) -> tuple[tuple[int | None, str | None, tuple[str, ...]], ...]:
    """Every import statement of ``source``, anywhere in it, as (level, module, names); level None
    for ``import a.b``. Parsing is most of a digest's cost, so it is done once per distinct text
    (an edited file is parsed again); what the names resolve to is looked up on every call."""
    out = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            out.append((None, None, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    return tuple(out)


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """Absolute names of every module that the source of ``name`` imports (anywhere in the file)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for level, module, names in _statements(path.read_bytes(), str(path)):
        if level is None:
            found.update(names)
            continue
        try:
            base = importlib.util.resolve_name("." * level + (module or ""), package or None) if level else module
        except (ImportError, ValueError):
            continue
        if not base:
            continue
        found.add(base)
        for alias in names:
            if alias != "*" and _spec(f"{base}.{alias}") is not None:
                found.add(f"{base}.{alias}")
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return {".".join(n.split(".")[:i]) for n in found for i in range(1, n.count(".") + 2)}


def source_files(roots: Iterable[str]) -> dict[str, Path]:
    """Module path -> file of ``roots`` and every module they import transitively (see module doc)."""
    roots = list(dict.fromkeys(roots))
    tops = {"plastibench"} | {r.partition(".")[0] for r in roots}
    todo = [".".join(r.split(".")[:i]) for r in roots for i in range(1, r.count(".") + 2)]
    seen: set[str] = set()
    files: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name.partition(".")[0] not in tops:
            continue
        seen.add(name)
        found = _source(name)
        if found is None:
            continue
        key, path = found
        files[key] = path
        todo.extend(_imports(name, path, key.endswith("/__init__.py")) - seen)
    return files


def run_modules(method_cls: type, task_cls: type) -> list[str]:
    """The root modules of a run: each method part's, the composition's, the task's, the engine."""
    parts = list(getattr(method_cls, "parts", ()) or ())
    return [*(p.__module__ for p in parts), method_cls.__module__, task_cls.__module__, ENGINE_MODULE]


def code_digest(method_cls: type, task_cls: type) -> str:
    """SHA-256 over (module path, file bytes) of :func:`source_files`, sorted by module path."""
    h = hashlib.sha256()
    for key, path in sorted(source_files(run_modules(method_cls, task_cls)).items()):
        data = path.read_bytes()
        for part in (key.encode(), data):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()


@contextlib.contextmanager
def run_lock(directory: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory/.lock``; ``on_wait()`` is called once before
    blocking when another process holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(directory: Path) -> int | None:
    """A file descriptor holding ``directory/.lock`` if no one else holds it, else None."""
    try:
        fd = os.open(Path(directory) / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
