"""The wheel installs one top-level name, `slm_router`, so it lives next to distributions that own `agents`.

The OpenAI Agents SDK ships a top-level `agents` package; these tests build our wheel and a stand-in for such
a distribution, install both into a fresh venv and import both. Everything is built here: no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--isolated"]  # --isolated: no pip configuration or PIP_* variables
# The repository folders that install under `slm_router.` (pyproject `package-dir`).
FOLDERS = ("router", "agents", "policies")

# Runs in the fresh venv: which `agents` and which `slm_router` did Python import, and from where?
PROBE = """
import json, sys
import agents
from slm_router import Router, load_policy, register_agent
import slm_router
import slm_router.agents
from slm_router.policies import DEFAULT_POLICY
policy = load_policy(DEFAULT_POLICY)
print(json.dumps({
    "agents_owner": agents.OWNER,
    "files": [agents.__file__, slm_router.__file__, slm_router.agents.__file__,
              sys.modules[Router.__module__].__file__, sys.modules[register_agent.__module__].__file__,
              sys.modules[load_policy.__module__].__file__],
    "routes": sorted(policy.routes),
    "editable_finders": [repr(finder) for finder in sys.meta_path if "editable" in repr(finder).lower()],
}))
"""


def run(command: list[str], **kwargs: Any) -> str:
    """A command's stdout; on failure, the assertion shows its stderr."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, **kwargs)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def build_wheel(project: Path, out: Path) -> Path:
    """`pip wheel` offline, with setuptools' build and egg-info folders kept out of the project tree.

    An in-tree `build/lib` left by an older layout would otherwise ship its stale files in the wheel.
    """
    scratch = out / f"{project.name}-build"
    scratch.mkdir(parents=True)
    extra_config = scratch / "setup.cfg"
    extra_config.write_text(f"[build]\nbuild_base = {scratch / 'build'}\n[egg_info]\negg_base = {scratch}\n")
    before = set(out.glob("*.whl"))
    run(
        [
            *PIP,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(project),
        ],
        env={**os.environ, "DIST_EXTRA_CONFIG": str(extra_config)},
    )
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


def fake_agents_project(tmp: Path) -> Path:
    """A distribution that owns the top-level name `agents`, as the OpenAI Agents SDK does."""
    project = tmp / "fake-agents-sdk"
    (project / "agents").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "fake-agents-sdk"
            version = "1.0.0"

            [tool.setuptools]
            packages = ["agents"]
            """
        )
    )
    (project / "agents" / "__init__.py").write_text('OWNER = "fake-agents-sdk"\n')
    return project


def source_files() -> set[str]:
    """Every file of the three folders (modules, presets, weights), named as it must appear in the wheel."""
    files = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.add(f"slm_router/{folder}/{path.relative_to(ROOT / folder).as_posix()}")
    return files


def test_wheel_installs_next_to_a_top_level_agents_package(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    ours = build_wheel(ROOT, wheels)

    names = zipfile.ZipFile(ours).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
    assert {n.split("/")[0] for n in names} == {"slm_router", dist_info}
    assert zipfile.ZipFile(ours).read(f"{dist_info}/top_level.txt").decode().split() == ["slm_router"]
    shipped = {n for n in names if n.startswith("slm_router/")}
    expected = source_files() | {"slm_router/__init__.py", "slm_router/py.typed"}
    assert shipped == expected, f"missing: {sorted(expected - shipped)}, extra: {sorted(shipped - expected)}"
    assert any(n.startswith(f"{dist_info}/") and "LICENSE" in n for n in names)  # the Apache-2.0 text

    theirs = build_wheel(fake_agents_project(tmp_path), wheels)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    run([*PIP, "--python", python, "install", "-q", "--no-deps", "--no-index", str(ours), str(theirs)])
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # The heavy dependencies come from this venv's site-packages, added as a plain path: its .pth files
    # (the editable install's finder among them) are not processed there.
    heavy = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_main_venv_dependencies.pth").write_text("\n".join(heavy) + "\n")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # -I: no PYTHONPATH, no user site, no working directory on sys.path.
    out = run([python, "-I", "-c", PROBE], cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["agents_owner"] == "fake-agents-sdk"
    outside = [f for f in probe["files"] if not Path(f).resolve().is_relative_to(site.resolve())]
    assert not outside, f"imported from outside the fresh venv: {outside}"
    assert probe["routes"], "the packaged default policy loads from the installed wheel"
    assert not probe["editable_finders"], "this venv's editable install leaked into the fresh one"
    assert "Usage" in run([str(venv / "bin" / "slm-router"), "--help"], cwd=cwd)


def test_packages_list_names_every_package_folder() -> None:
    """setuptools installs only the listed packages: a sub-package missing from the list would not ship."""
    listed = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]
    folders = {"slm_router"}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            folders.add(".".join(("slm_router", folder, *init.parent.relative_to(ROOT / folder).parts)))
    assert len(listed) == len(set(listed))
    assert set(listed) == folders


def test_every_folder_of_modules_is_a_package() -> None:
    """A folder of modules without `__init__.py` would be skipped by the packages list above."""
    for folder in FOLDERS:
        for module in (ROOT / folder).rglob("*.py"):
            assert (module.parent / "__init__.py").is_file(), f"{module.parent}: modules, no __init__.py"
