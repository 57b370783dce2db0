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
    declared = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-")}
    assert listed == declared, "environment.yml's pip section must list exactly pyproject's dependencies and dev extra"
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert "3.11" in python


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
