"""The layering, checked: every import of the project's own modules goes down, never up.

From the bottom: `core` (the Binance protocol and client, no Django: usable by anyone), `fake` (the fake
exchange, built on the core only), `data` (the Django app's storage and the parts the live page shares),
`collection` (the Celery side: runtime, buffer, supervision, audit, archive), `web` (pages, sockets, the
live hub, URLs), and `tools` (benchmarks and management commands), which may use everything. An import
inside a function counts the same as one at the top.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "workers", "project", "web", "benchmarks")
FRAMEWORKS = ("django", "channels", "channels_redis", "celery", "django_celery_beat")

# (layer, module patterns); a module takes the first layer whose pattern matches (`streams.binance` is a
# namespace package: its name alone is what `from streams.binance import client` imports).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tools", ("benchmarks", "benchmarks.*", "*.management.commands.*", "project.launcher*")),
    ("core", ("streams.binance", "streams.binance.*")),
    ("fake", ("streams.fake", "streams.fake.*")),
    ("web", ("web", "web.*")),
    ("collection", ("workers", "workers.*")),
    ("data", ("streams", "streams.*", "project", "project.*")),
]
ORDER = ["core", "fake", "data", "collection", "web", "tools"]
# What each layer may import of the project, beyond itself and the layers below it.
BELOW = {"core": set(), "fake": {"core"}, "data": {"core"}, "collection": {"core", "data"},
         "web": {"core", "data", "collection"}, "tools": set(ORDER)}


def layer_of(module: str) -> str:
    return next(layer for layer, patterns in LAYERS if any(fnmatch(module, p) for p in patterns))


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_import_of_the_project_goes_down_the_layers() -> None:
    wrong = []
    for module, path in sorted(project_modules().items()):
        layer = layer_of(module)
        allowed = BELOW[layer] | {layer}
        for name in sorted(imports_of(path)):
            if name.split(".")[0] in PACKAGES and layer_of(name) not in allowed:
                wrong.append(f"{module} ({layer}) imports {name} ({layer_of(name)})")
    assert not wrong, "imports that go up the layers:\n" + "\n".join(wrong)


def test_the_core_and_the_fake_exchange_need_no_framework() -> None:
    wrong = [f"{module} imports {name}" for module, path in sorted(project_modules().items())
             if layer_of(module) in ("core", "fake")
             for name in sorted(imports_of(path)) if name.split(".")[0] in FRAMEWORKS]
    assert not wrong, "\n".join(wrong)


def test_the_layers_cover_the_modules_they_name() -> None:
    # A layer pattern that matches nothing is a typo: the rule it meant would not be checked.
    modules = set(project_modules()) | {name for path in project_modules().values() for name in imports_of(path)}
    unused = [p for _, patterns in LAYERS for p in patterns if not any(fnmatch(m, p) for m in modules)]
    assert not unused, unused
