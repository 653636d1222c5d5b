"""The layering, checked: the folders are the layers, every import goes down them, and no modules import
each other in a circle.

From the bottom: `core` (streams/binance: the Binance protocol and client, no framework: usable by anyone),
`fake` (streams/fake: the fake exchange, built on the core only), `data` (streams/: storage, the archive's
format, exports, the one-off collector, the read API; streams/lake: the Parquet lake's files, no framework
either), `config` (project/: settings, environment readers, logging, the Celery app), `collection` (workers/:
the Celery side: runtime, buffer, supervision, audit, archive import, sealing), `web` (web/: pages, sockets,
the live hub, endpoints, URLs, ASGI) and `tools` (benchmarks/, project/launcher/ and every app's management
commands), which may use everything. An import inside a function counts the same as one at the top.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "workers", "project", "web", "benchmarks")
FRAMEWORKS = ("django", "channels", "channels_redis", "celery", "django_celery_beat")

# Folder patterns per layer; a module belongs to the layer of the longest pattern its folder matches.
FOLDERS: dict[str, tuple[str, ...]] = {
    "core": ("streams/binance",),
    "fake": ("streams/fake",),
    "data": ("streams", "streams/lake"),
    "config": ("project",),
    "collection": ("workers",),
    "web": ("web", "web/*"),
    "tools": ("benchmarks", "benchmarks/*", "project/launcher", "*/management", "*/management/commands"),
}
# What each layer may import of the project, beyond itself.
BELOW = {
    "core": set(),
    "fake": {"core"},
    "data": {"core"},
    "config": {"core", "data"},
    "collection": {"core", "config", "data"},
    "web": {"core", "config", "data", "collection"},
    "tools": set(FOLDERS),
}


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = project_modules()


def folder_of(module: str) -> str:
    path = MODULES[module].relative_to(ROOT)
    return str(path.parent)


def layer_of(module: str) -> str:
    folder = folder_of(module)
    matches = [(len(pattern), layer) for layer, patterns in FOLDERS.items() for pattern in patterns
               if fnmatch(folder, pattern)]
    assert matches, f"{module} is in {folder}/, which no layer names"
    return max(matches)[1]


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports (`from streams import queries` imports streams.queries)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            names |= submodules or {node.module}
    return {name for name in names if name.split(".")[0] in PACKAGES}


def test_every_import_of_the_project_goes_down_the_layers() -> None:
    wrong = []
    for module, path in sorted(MODULES.items()):
        layer = layer_of(module)
        for name in sorted(imports_of(path)):
            if name in MODULES and layer_of(name) not in BELOW[layer] | {layer}:
                wrong.append(f"{module} ({layer}) imports {name} ({layer_of(name)})")
    assert not wrong, "imports that go up the layers:\n" + "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {module: {name for name in imports_of(path) if name in MODULES and name != module}
             for module, path in MODULES.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                circles.append(" -> ".join([*path[path.index(name):], name]))
            elif name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "modules that import each other:\n" + "\n".join(circles)


def test_the_core_the_fake_exchange_and_the_lake_need_no_framework() -> None:
    wrong = [f"{module} imports {name}" for module, path in sorted(MODULES.items())
             if layer_of(module) in ("core", "fake") or folder_of(module) == "streams/lake"
             for name in sorted(_all_imports(path)) if name.split(".")[0] in FRAMEWORKS]
    assert not wrong, "\n".join(wrong)


def test_every_folder_of_the_project_is_in_a_layer() -> None:
    unplaced = sorted({folder_of(m) for m in MODULES} - {
        folder_of(m) for m in MODULES if any(fnmatch(folder_of(m), p) for ps in FOLDERS.values() for p in ps)})
    assert not unplaced, unplaced


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
