"""Where the shipped models are found; the wheel works on its own (tier `wheel`): built offline from
what the Dockerfile copies (sdist, then the wheel from the sdist, as `python -m build` makes them), it
holds the package and the shipped models and nothing else; installed into a fresh venv outside the
checkout (its dependencies borrowed from .venv, never the editable install) it runs the shipped test
case from a folder outside the checkout to test/expected's outputs, as test.sh checks the image's, and
without the atlases it stops with the atlas message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What the Dockerfile copies to build the package: the build needs no more.
SOURCES = ("pyproject.toml", "README.md", "src", "models")
#: Far above the package and the two shipped models (about 9 MB compressed): it fails when something
#: a checkout holds besides them (training work, data) slips in.
MAX_WHEEL_BYTES = 15_000_000


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of SOURCES (the checkout gets no build/ or egg-info from it)."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(dist.glob("mixmicrobleednet-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    return wheels[0]


def test_shipped_models_are_the_variables_else_the_installed_packages_else_the_checkouts(tmp_path, monkeypatch):
    from mixmicrobleednet import modelfolder

    monkeypatch.delenv(modelfolder.MODELS_VARIABLE, raising=False)
    assert modelfolder.models_folder() == REPO / "models"  # this editable install
    installed, checkout = tmp_path / "site-packages" / "mixmicrobleednet" / "models", tmp_path / "checkout" / "models"
    monkeypatch.setattr(modelfolder, "PACKAGE_MODELS_DIR", installed)
    monkeypatch.setattr(modelfolder, "CHECKOUT_MODELS_DIR", checkout)
    assert modelfolder.models_folder() == installed  # neither: the package's, which the error then names
    checkout.mkdir(parents=True)
    assert modelfolder.models_folder() == checkout  # an editable install
    installed.mkdir(parents=True)
    assert modelfolder.models_folder() == installed  # a wheel
    monkeypatch.setenv(modelfolder.MODELS_VARIABLE, str(tmp_path))
    assert modelfolder.models_folder() == tmp_path  # the image


def clean_environment(venv: Path, **variables: str) -> dict[str, str]:
    """The caller's environment without our variables, Python's search paths and .venv on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MIXMICROBLEEDNET_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != REPO / ".venv" / "bin"]
    return env | {"PATH": os.pathsep.join([str(venv / "bin"), *path]), **variables}


def in_venv(venv: Path, program: str, *args, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    """The venv's `program` (its python, or mixmicrobleednet) in the clean environment; output captured."""
    return subprocess.run([venv / "bin" / program, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=clean_environment(venv, **variables))


#: The shipped test case as test.sh runs the image on it (--fast, here on the CPU); --model auto, the default.
PREDICT_TEST_CASE = ("predict", "-i", REPO / "test" / "input", "--fast", "--device", "cpu", "-o")


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv outside the checkout with the wheel installed (no pip, no system site-packages); the
    dependencies come from the running environment's site-packages through a .pth line, which adds
    that folder to sys.path without running its .pth files (so not the editable install's)."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Before the .pth: pip must not see the editable install's metadata as this venv's package.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
                             capture_output=True, text=True, env=clean_environment(venv))
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    site_packages = Path(in_venv(venv, "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                                 cwd=venv.parent).stdout.strip())
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "zz-test-dependencies.pth").write_text("".join(f"{path}\n" for path in borrowed))
    return venv


@pytest.mark.wheel
def test_wheel_holds_the_package_and_the_shipped_models_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if not n.split("/")[0].endswith(".dist-info")}
    package = REPO / "src" / "mixmicrobleednet"
    modules = {f"mixmicrobleednet/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    shipped = subprocess.run(["git", "ls-files", "models"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    models = {f"mixmicrobleednet/{name}" for name in shipped}
    assert models and any(name.endswith("/fold_all/checkpoint_final.pth") for name in models)
    assert names - modules - models == set(), "the wheel holds more than the package and the shipped models"
    assert modules - names == set(), "modules or package files missing (a new subpackage: pyproject.toml packages)"
    assert models - names == set(), "shipped model files missing (pyproject.toml package-data)"
    assert wheel.stat().st_size < MAX_WHEEL_BYTES


@pytest.mark.wheel
def test_installed_wheel_finds_its_own_package_and_models(venv):
    probe = ("import mixmicrobleednet; from mixmicrobleednet.modelfolder import models_folder, shipped_models; "
             "print(mixmicrobleednet.__file__); print(models_folder()); print(*sorted(shipped_models()))")
    found = in_venv(venv, "python", "-c", probe, cwd=venv.parent)
    assert found.returncode == 0, found.stderr[-3000:]
    package_file, models_dir, names = found.stdout.splitlines()
    assert Path(package_file).is_relative_to(venv.resolve()), found.stdout
    assert Path(models_dir).is_relative_to(venv.resolve()), found.stdout
    assert names.split() == sorted(p.parent.name for p in (REPO / "models").glob("*/plans.json"))


@pytest.mark.wheel
def test_installed_wheel_runs_the_test_case_outside_the_checkout(venv, tmp_path):
    workdir, output = tmp_path / "workdir", tmp_path / "output"
    workdir.mkdir()
    run = in_venv(venv, "mixmicrobleednet", *PREDICT_TEST_CASE, output, cwd=workdir)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "per case the shipped model that fits (model phantom-t1-t2-t2s" in log and "model phantom-t2s" in log, log
    assert f"model loaded once from {venv.resolve()}" in log, log
    check = in_venv(venv, "python", "-m", "mixmicrobleednet.regression", REPO / "test" / "expected", output, cwd=workdir)
    assert check.returncode == 0, check.stdout[-5000:] + check.stderr[-3000:]


@pytest.mark.wheel
def test_installed_wheel_without_the_atlases_says_so(venv, tmp_path):
    empty = tmp_path / "no-atlas"
    empty.mkdir()
    run = in_venv(venv, "mixmicrobleednet", *PREDICT_TEST_CASE, tmp_path / "output", cwd=tmp_path,
                  MIXMICROBLEEDNET_ATLAS_DIR=str(empty))
    log = run.stdout + run.stderr
    assert run.returncode == 2, log[-3000:]
    assert "microbleed regions need the MNI atlases of Debian's mricron-data" in log and "--no-regions" in log, log
    assert "Traceback" not in log, log
