"""The wheel installs one top-level name, `slm_router`, so it lives next to distributions that own `agents`.

The OpenAI Agents SDK ships a top-level `agents` package; these tests build our wheel and a stand-in for such
a distribution, install both into a fresh venv and import both. Everything is built here: no network.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from setuptools.config.pyprojecttoml import read_configuration

from slm_router.extras import EXTRAS

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


def front_door_files() -> set[str]:
    """`slm_router/`'s own files (`__init__`, `extras`, `py.typed`), not the links to the three folders."""
    return {
        f"slm_router/{path.name}"
        for path in (ROOT / "slm_router").iterdir()
        if path.is_file() and not path.is_symlink()
    }


def test_wheel_installs_next_to_a_top_level_agents_package(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    ours = build_wheel(ROOT, wheels)

    names = zipfile.ZipFile(ours).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
    assert {n.split("/")[0] for n in names} == {"slm_router", dist_info}
    assert zipfile.ZipFile(ours).read(f"{dist_info}/top_level.txt").decode().split() == ["slm_router"]
    shipped = {n for n in names if n.startswith("slm_router/")}
    expected = source_files() | front_door_files()
    assert shipped == expected, f"missing: {sorted(expected - shipped)}, extra: {sorted(shipped - expected)}"
    assert {"slm_router/py.typed", "slm_router/extras.py"} <= shipped  # PEP 561 marker; the extras table
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


# --- dependencies: every import declared, and a missing extra named where it is needed ---

# Where the distribution's own modules live, and the development trees with the groups they may also use.
PRODUCT = (*FOLDERS, "slm_router")
DEV_TREES = {"tests": ("dev",), "bench": ("dev", "bench"), "examples": ()}
# Every module an extra installs, blocked in a child process as if the extra were not installed.
EXTRA_TOP_NAMES = {extra: {module.split(".")[0] for module in modules} for extra, modules in EXTRAS.items()}
EXTRA_MODULES = sorted(set().union(*EXTRA_TOP_NAMES.values()))


def _normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """pyproject's groups as {"core": distributions, extra: distributions}; `slm-router[...]` resolved."""
    project = read_configuration(ROOT / "pyproject.toml")["project"]
    raw: dict[str, list[str]] = {"core": project["dependencies"], **project["optional-dependencies"]}

    def resolve(group: str) -> set[str]:
        names: set[str] = set()
        for spec in raw[group]:
            requirement = Requirement(spec)
            if _normal(requirement.name) == "slm-router":
                names |= set().union(*(resolve(extra) for extra in requirement.extras))
            else:
                names.add(_normal(requirement.name))
        return names

    return {group: resolve(group) for group in raw}


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level names of the folder's absolute imports that are neither the standard library nor its own
    modules -> the files importing each."""
    modules = folder.glob("*.py") if folder.name == "slm_router" else folder.rglob("*.py")  # not the links
    own = {"__future__", "slm_router", *(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file())}
    found: dict[str, set[str]] = {}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in (n.split(".")[0] for n in names):
                sibling = (path.parent / f"{name}.py").exists() or (path.parent / name).is_dir()
                if name not in sys.stdlib_module_names and name not in own and not sibling:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(folders: tuple[str, ...], allowed: set[str]) -> list[str]:
    providers = packages_distributions()
    problems = []
    for folder in folders:
        for name, files in sorted(third_party_imports(ROOT / folder).items()):
            # A module that is not installed here (bench/'s semantic-router under `make test`) is matched by
            # the usual convention: the distribution of the same name.
            dists = {_normal(d) for d in providers.get(name, [])} or {_normal(name)}
            if not dists & allowed:
                problems.append(f"{name} ({sorted(dists)}): {sorted(files)}")
    return problems


def test_every_import_of_the_product_is_declared_in_core_or_its_extra() -> None:
    groups = declared()
    product = groups["core"].union(*(groups[extra] for extra in EXTRAS))
    assert not undeclared(PRODUCT, product), "imported, not declared in pyproject.toml"
    providers = packages_distributions()
    misplaced = []
    for folder in PRODUCT:
        for name in third_party_imports(ROOT / folder):
            dists = {_normal(d) for d in providers[name]}
            if dists & groups["core"]:
                continue
            # Only an extra installs it: the extras table must list it under that extra, so that the error
            # raised when it is missing names the extra that installs it.
            extras = {extra for extra in EXTRAS if dists & groups[extra]}
            listed = {extra for extra, names in EXTRA_TOP_NAMES.items() if name in names}
            if not extras & listed:
                misplaced.append(f"{name}: in {sorted(extras)} of pyproject, {sorted(listed)} of EXTRAS")
    assert not misplaced


def test_tests_and_benchmarks_import_only_what_their_install_targets_install() -> None:
    """`make test` installs `.[all,dev]`, `make bench` adds `.[bench]`."""
    groups = declared()
    product = groups["core"].union(*(groups[extra] for extra in EXTRAS))
    for tree, extra_groups in DEV_TREES.items():
        allowed = product.union(*(groups[group] for group in extra_groups))
        assert not undeclared((tree,), allowed), f"{tree}/ imports what its install target does not install"


def provides(distribution: str, module: str) -> bool:
    """Whether the installed distribution ships `module` (dotted), by its RECORD: exact for namespace packages
    such as `opentelemetry`, which many distributions share."""
    path = module.replace(".", "/")
    files = {f.as_posix() for f in importlib.metadata.distribution(distribution).files or []}
    return any(f.startswith(f"{path}/") or f.startswith(f"{path}.") for f in files)  # a package or a module


def test_extras_table_matches_pyproject() -> None:
    """slm_router/extras.py names the extras pyproject.toml declares, each with the modules its distributions
    ship, and [all] is every one of them."""
    groups = declared()
    assert set(groups) - {"core", "dev", "bench", "all"} == set(EXTRAS)
    assert groups["all"] == set().union(*(groups[extra] for extra in EXTRAS))
    for extra, modules in EXTRAS.items():
        shipped_by = {module: {d for d in groups[extra] if provides(d, module)} for module in modules}
        assert all(shipped_by.values()), f"[{extra}]: no declared distribution ships {shipped_by}"
        assert set().union(*shipped_by.values()) == groups[extra], f"[{extra}]: {shipped_by}"
        assert not groups[extra] & groups["core"], f"[{extra}] repeats core dependencies"


# Runs in a child process: the listed modules are made unimportable (as if not installed), then the snippet
# runs; prints which extra the MissingExtraError named, and its message.
BLOCKED_PROBE = """
import json, sys
sys.modules.update(dict.fromkeys(sys.argv[1].split(",")))
from slm_router.extras import MissingExtraError
try:
    exec(sys.argv[2])
except MissingExtraError as exc:
    print(json.dumps({"extra": exc.extra, "message": str(exc)}))
else:
    print(json.dumps(None))
"""


def run_blocked(blocked: list[str], code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300", **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_PROBE, ",".join(blocked), code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("extra", "blocked", "code"),
    [
        ("ray", "ray", "import slm_router.agents.hosting.ray_serve"),
        (
            "llamacpp",
            "llama_cpp",
            "from slm_router.agents.fallback.chat_models import LlamaCppChatModel, packaged_gguf_path\n"
            "LlamaCppChatModel(model_path=str(packaged_gguf_path())).invoke('hi')",
        ),
        (
            "eval",
            "sacrebleu",
            "from slm_router.router.ops.specialist_eval import translation_scores\n"
            "translation_scores(['a cat'], ['a cat'])",
        ),
        ("eval", "matplotlib", "from slm_router.router.ops.report import _figure\n_figure()"),
        ("serve", "fastapi", "from slm_router.router.service.app import create_app"),
        ("serve", "prometheus_client", "import slm_router.router.service.metrics"),
    ],
    ids=["ray", "llama_cpp", "sacrebleu", "matplotlib", "fastapi", "prometheus_client"],
)
def test_a_missing_extra_is_named_where_it_is_needed(extra: str, blocked: str, code: str) -> None:
    proc = run_blocked([blocked], code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raised = json.loads(proc.stdout.strip().splitlines()[-1])
    assert raised is not None, f"no MissingExtraError without {blocked}"
    assert raised["extra"] == extra
    assert f"pip install 'slm-router[{extra}]'" in raised["message"]
    assert blocked in raised["message"]


@pytest.mark.parametrize(
    ("extra", "blocked", "argv"),
    [
        ("serve", "uvicorn", ["serve"]),
        ("eval", "matplotlib", ["eval", "--sentiment", "{data}"]),
    ],
    ids=["serve", "eval"],
)
def test_the_cli_names_a_missing_extra_in_one_line(
    extra: str, blocked: str, argv: list[str], tmp_path: Path
) -> None:
    """Before loading any model: exit 1, one `error:` line with the pip command, no traceback."""
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "great", "label": "positive"}\n')
    args = [a.format(data=data) for a in argv]
    code = f"from slm_router.router.cli import app\napp({args!r}, prog_name='slm-router')"
    proc = run_blocked([blocked], code, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert f"pip install 'slm-router[{extra}]'" in proc.stderr


def test_library_router_and_cli_help_need_no_extra(fake_llm: Any) -> None:
    """`pip install slm-router` alone: the Python API routes to a specialist in-process and to an
    OpenAI-compatible fallback (the fake server), and the CLI answers --help, with every extra missing."""
    code = textwrap.dedent(
        """
        from slm_router import Router, RouteRequest
        router = Router.from_policy(None)
        try:
            sentiment = router.invoke("I absolutely love this product, thank you!")
            general = router.invoke(RouteRequest(text="Tell me a joke about cats", route="other"))
        finally:
            router.close()
        from slm_router.router.cli import app
        print(json.dumps({"sentiment": [sentiment.action, sentiment.route], "general": general.output,
                          "loaded": sorted(m for m in sys.argv[1].split(",") if sys.modules.get(m))}))
        try:
            app(["--help"], prog_name="slm-router")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        """
    )
    overrides = {
        "SLM_ROUTER__FALLBACK__KIND": "openai",
        "SLM_ROUTER__FALLBACK__BASE_URL": fake_llm.base_url,
        "SLM_ROUTER__FALLBACK__MODEL": "fake",
    }
    proc = run_blocked(EXTRA_MODULES, code, env=overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert result["sentiment"] == ["specialist", "sentiment"]
    assert result["general"].startswith("fake answer")
    assert not result["loaded"]
    assert "Usage" in proc.stdout
