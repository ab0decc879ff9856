"""docs/architecture.md's picture of the layers is the code's: its arrows are exactly the
imports between the layers' folders."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "contract": "flan_t5_detox/contract",
    "fast": "flan_t5_detox/fast",
    "ml": "flan_t5_detox/ml",
    "fixtures": "flan_t5_detox/fixtures",
    "entrypoints": "entrypoints",
    "launcher": "launcher",
    "bench": "bench",
}
IMPORT_NAMES = {"detox_entrypoints": "entrypoints", "detox_launcher": "launcher", "bench": "bench"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "flan_t5_detox":
        return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else None
    return IMPORT_NAMES.get(parts[0])


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def code_arrows() -> set[tuple[str, str]]:
    arrows = set()
    for layer, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            for module in imported_modules(path):
                target = layer_of(module)
                if target and target != layer:
                    arrows.add((layer, target))
    return arrows


def drawn_arrows() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = re.search(r"```mermaid\n(.*?)```", text, re.S).group(1)
    return set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", diagram, re.M))


def test_the_picture_has_exactly_the_code_s_arrows():
    assert drawn_arrows() == code_arrows()


def test_the_layers_point_one_way():
    arrows = code_arrows()
    assert not {(a, b) for a, b in arrows if (b, a) in arrows}
    assert {target for layer, target in arrows if layer == "launcher"} == {"contract"}
    assert not {target for layer, target in arrows if layer == "contract"}


def test_a_layer_of_a_module_is_read_from_its_import_name():
    assert layer_of("flan_t5_detox.ml.ppo") == "ml" and layer_of("detox_launcher.cli") == "launcher"
    assert layer_of("flan_t5_detox") is None and layer_of("torch.nn") is None
