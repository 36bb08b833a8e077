"""The import directions of pyproject `[tool.importlinter]` hold, and a wrong import breaks them.

Run here so that the README's test command (`make test`) enforces them; `make lint` runs `lint-imports` too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {
    c["id"]: c["name"]
    for c in read_configuration(ROOT / "pyproject.toml")["tool"]["importlinter"]["contracts"]
}


def lint_imports(project: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the `slm_router` package in `project`, with `project`'s pyproject contracts."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.fail("lint-imports not found next to this Python: pip install -e '.[dev]'")
    selected = [arg for contract_id in contract_ids for arg in ("--contract", contract_id)]
    return subprocess.run(
        [command, "--no-cache", "--no-logo", *selected],
        cwd=project,  # lint-imports reads ./pyproject.toml and imports from the working directory first
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    if proc.returncode != 0:
        pytest.fail(proc.stdout + proc.stderr, pytrace=False)


# One deliberately wrong import per contract: (contract id, module of the copy, the import it gains).
WRONG_IMPORTS = [
    ("policies-standalone", "slm_router.policies.schema", "slm_router.router.errors"),
    ("policies-standalone", "slm_router.policies", "numpy"),
    ("agents-standalone", "slm_router.agents", "slm_router.policies"),
    ("no-dev-trees", "slm_router.router.core", "bench"),
    ("core-is-inner", "slm_router.router.core", "slm_router.router.runnable"),
    ("cli-is-outer", "slm_router.router.ops", "slm_router.router.cli"),
]


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pyproject.toml and one real tree of `slm_router`: copytree follows slm_router/'s folder links."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "slm_router", project / "slm_router", ignore=shutil.ignore_patterns("__pycache__"))
    return project


@pytest.mark.parametrize(("contract_id", "importer", "imported"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    package_copy: Path, contract_id: str, importer: str, imported: str
) -> None:
    chain = f"{importer} -> {imported}"
    module = package_copy.joinpath(*importer.split("."))
    source = module / "__init__.py" if module.is_dir() else module.with_suffix(".py")
    original = source.read_text()
    assert chain not in lint_imports(package_copy, contract_id).stdout

    source.write_text(f"{original}\nimport {imported}\n")
    try:
        proc = lint_imports(package_copy, contract_id)
    finally:
        source.write_text(original)

    assert proc.returncode != 0
    assert f"{CONTRACTS[contract_id]} BROKEN" in proc.stdout
    assert chain in proc.stdout, proc.stdout
