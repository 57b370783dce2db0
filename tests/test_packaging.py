"""The environment files agree, and the project's own promises hold."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {_name(r): r.replace(" ", "") for r in project["dependencies"] + extras["lab"] + extras["dev"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-")}
    assert listed == declared, "environment.yml's pip section must list exactly pyproject's dependencies and its lab and dev extras"
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert "3.11" in python


def test_core_dependencies_are_what_a_notebook_needs_in_colab():
    """Colab has its own notebook server and ipywidgets 7.7: the install must not replace them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(r): r for r in project["dependencies"]}
    for tool in ("jupyterlab", "voila", "papermill", "nbval", "playwright", "pytest", "ipykernel", "notebook"):
        assert tool not in core, f"{tool} belongs in an extra ([lab] or [dev]), not in the core dependencies"
    for needed in ("torch", "atomai", "numpy", "scipy", "scikit-image", "matplotlib", "ipywidgets", "safetensors", "rosettasciio", "pooch", "six"):
        assert needed in core
    floor = re.search(r">=\s*([\d.]+)", core["ipywidgets"]).group(1)
    assert tuple(int(x) for x in floor.split(".")) <= (7, 7), "an ipywidgets floor above 7.7 upgrades Colab's own widgets"


def test_the_version_is_defined_once():
    import elit_utils
    from elit_utils.config import INSTALL_SPEC, VERSION

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "elit_utils.config.VERSION"}
    assert elit_utils.__version__ == VERSION and INSTALL_SPEC.endswith(f"@v{VERSION}")


def test_torch_is_not_pinned_to_the_preinstalled_cpu_build():
    text = (REPO / "pyproject.toml").read_text()
    assert "torch==2.13" not in text and "six" in text


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    commands = [line.strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make reproduce", "make test"]


def test_ci_script_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and (REPO / ".ci" / "run").stat().st_mode & 0o111
