"""The tree's one-way layers (pyproject.toml's import-linter contract), imports at the top of
each module, and the planner's promise to run with PyYAML alone."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "edgedistill"
HEAVY = ("torch", "numpy", "transformers", "onnx", "onnxruntime", "llama_cpp", "gguf",
         "optimum", "matplotlib", "tokenizers", "safetensors")


def test_import_linter_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
        shutil.which("lint-imports")
    if exe is None:
        pytest.fail("import-linter is not installed (make setup installs it: "
                    "pip install -e .[dev])")
    r = subprocess.run([exe, "--no-cache"], capture_output=True, text=True,
                       cwd=PKG.parent, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def _function_level_own_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            own = (node.level > 0 if isinstance(node, ast.ImportFrom) else False) or any(
                (getattr(node, "module", None) or a.name).startswith("edgedistill")
                for a in node.names)
            if own:
                out.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    return out


def test_own_modules_are_imported_at_the_top_of_each_file():
    """Only the CLI's verbs import their stage when they run (so that `plan` and `profiles`
    load no torch); everything else imports the package's modules at the top."""
    found = [hit for f in sorted(PKG.rglob("*.py")) if "cli" not in f.relative_to(PKG).parts
             for hit in _function_level_own_imports(f)]
    assert found == []


def test_no_relative_imports():
    found = [f"{f.relative_to(PKG.parent)}:{n.lineno}" for f in sorted(PKG.rglob("*.py"))
             for n in ast.walk(ast.parse(f.read_text()))
             if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert found == []


@pytest.mark.parametrize("argv", [["plan", "--target", "laptop", "--json"],
                                  ["profiles", "--json"],
                                  ["plan", "--target", "phone-npu", "--speedup", "1.2"]])
def test_plan_and_profiles_run_with_pyyaml_alone(argv):
    blocker = "; ".join(f"sys.modules[{m!r}] = None" for m in HEAVY)
    code = (f"import sys; {blocker}; from edgedistill.cli import main; "
            f"sys.exit(main({argv!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
