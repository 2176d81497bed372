"""The engine depends on no adapter, storage, voice, inference, tools or platform SDK module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "adapters",
    "storage",
    "voice",
    "inference",
    "tools",
    "mcp",
    "bot",
    "config",
    "discord",
    "telegram",
    "slack_bolt",
    "slack_sdk",
    "openai",
    "ollama",
    "llama_cpp",
    "chromadb",
    "redis",
    "asyncpg",
    "aiosqlite",
    "sqlalchemy",
    "aiohttp",
    "onnxruntime",
    "tokenizers",
    "faster_whisper",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_imports_nothing_outside_itself() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN)
        for path in (ROOT / "engine").rglob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_check_sees_imports() -> None:
    sample = ROOT / "bot" / "app.py"
    assert {"engine", "config"} <= imported_modules(sample)


PACKAGES = ("adapters", "bot", "config", "engine", "inference", "storage", "tools", "voice")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports at module level (``if TYPE_CHECKING:`` blocks included;
    imports inside functions, made lazily on purpose, left out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    statements: list[ast.stmt] = []
    for node in tree.body:
        statements.extend(node.body if isinstance(node, ast.If) else [node])
    found: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def project_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    # a module importing its own package (Python imports the package first anyway) is no cycle
    return {
        name: {m for m in module_level_imports(path) if m in modules and not f"{name}.".startswith(f"{m}.")}
        for name, path in modules.items()
    }


def test_no_module_imports_itself_through_others() -> None:
    graph = project_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "\n".join(" → ".join(cycle) for cycle in cycles)


def test_adapters_never_reach_back_into_the_process() -> None:
    offenders = {
        name: sorted(m for m in imports if m.startswith("bot"))
        for name, imports in project_graph().items()
        if name.startswith("adapters")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_cycle_check_sees_relative_imports() -> None:
    assert "bot.discord.commands" in project_graph()["bot.discord.client"]
