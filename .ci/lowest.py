"""Print the constraints of the lowest supported set: constraints.txt, with each package whose
lower bound pyproject.toml claims (the dependencies, the drivers' extras, FastAPI) pinned at
that lower bound, and the pins of what those old releases can't take left free.

Used by `make test-lowest-deps`, which installs it and runs the conformance suite on it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("postgres", "redis", "jwt", "prometheus")  # what the suite runs on
DEV = ("fastapi",)  # the framework it supports besides Starlette
#: pins the lowest releases cannot take (their own upper bounds); left to pip
FREE = (
    "packaging",
    "deprecated",
    "typing-extensions",
    "importlib-resources",
    "python-multipart",  # FastAPI 0.110 imports it as `multipart`, which newer releases deprecate
)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def lowest() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = list(project["dependencies"])
    wanted += [r for extra in EXTRAS for r in extras[extra]]
    wanted += [r for r in extras["dev"] if _name(r) in DEV]
    bounds = {}
    for requirement in wanted:
        found = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
        if found is None:
            sys.exit(f"{requirement!r} claims no lower bound")
        bounds[_name(requirement)] = found.group(1)
    return bounds


def main() -> None:
    bounds = lowest()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name = _name(line) if line and not line.startswith("#") else ""
        if name and (name in bounds or name in FREE):
            continue
        print(line)
    for name, version in sorted(bounds.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
