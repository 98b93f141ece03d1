"""The package's layout is its architecture: imports go one way (front ends -> training/evaluation ->
the method -> SAM and the volume), the engine never imports Slicer, and the installed package runs
from any folder."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import SPDSegmentLib

PACKAGE = Path(SPDSegmentLib.__file__).resolve().parent
# what each part may import from the package (besides itself)
ALLOWED = {
    "volume": set(),
    "sam": set(),
    "method": {"volume", "sam"},
    "io": {"volume", "method"},
    "evaluation": {"volume", "method", "sam", "io"},
    "training": {"volume", "method", "sam", "io", "evaluation"},
    "frontends": {"volume", "method", "sam", "io", "evaluation", "training"},
    "models": set(),
    "__main__": {"frontends"},
    "__init__": set(),
}
SLICER_FRONT_ENDS = {"frontends/mrml_logic.py", "frontends/mrml_headless.py", "frontends/slicer_dependencies.py"}
GUI_MODULES = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "trame", "trame_slicer", "PythonQt"}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, level) of every import in the file, at any depth (lazy imports count)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE).with_suffix("")
    package = ["SPDSegmentLib", *rel.parts[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                found.append((name, node.level))
                if not node.module:
                    found += [(f"{name}.{a.name}", node.level) for a in node.names]
            else:
                found.append((node.module or "", 0))
    return found


def test_imports_go_one_way_between_the_parts():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        part = _part(path)
        for name, _ in _imports(path):
            if not name.startswith("SPDSegmentLib."):
                continue
            target = name.split(".")[1]
            if target in ("__init__", "__version__"):
                continue
            if target != part and target not in ALLOWED.get(part, set()):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_engine_never_imports_slicer_qt_or_vtk():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in SLICER_FRONT_ENDS or rel.startswith("frontends/web/"):
            continue
        for name, level in _imports(path):
            if level == 0 and name.split(".")[0] in GUI_MODULES:
                offenders.append(f"{rel} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_paper_stages_are_files_named_after_them():
    method = {p.stem for p in (PACKAGE / "method").glob("*.py")}
    assert {"prompts", "saliency", "continuity", "cpd", "rendering", "pipeline"} <= method
    sam = {p.stem for p in (PACKAGE / "sam").glob("*.py")}
    assert {"backend", "onnx_runtime", "embedding_cache", "lora", "model_files"} <= sam


def test_the_installed_package_runs_from_any_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "SPDSegmentLib", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == SPDSegmentLib.__version__
    script = shutil.which("spdsegment", path=str(Path(sys.executable).parent))
    assert script, "the spdsegment console script is installed"
    out = subprocess.run([script, "segment", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "--centerline" in out.stdout
