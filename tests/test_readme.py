"""The README against the code: the options tables (``Credits``' keywords and the fields of its
option groups), the install lines, links that work on the package index's page. Each test reads
the code's own view (``Credits``' signature, the groups' fields, the ``CREDIT_*`` variables,
``pyproject.toml``), so an option added later fails here until the README names it."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from credit_middleware import Credits
from credit_middleware._env import VARIABLES
from credit_middleware.config.legacy import GROUPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CODE = re.compile(r"`([^`]+)`")
#: variables that build an option rather than set one of the same name
BUILDS = {"trial_amount": "policy"}


def _table(header: str) -> list[dict[str, str]]:
    """The rows of the table headed ``| <header> | `CREDIT_*` variable | default | meaning |``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} | `CREDIT_*`"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        assert len(cells) == 4, f"a row of the {header} table has {len(cells)} cells: {line}"
        rows.append(dict(zip(("option", "variable", "default", "meaning"), cells, strict=True)))
    return rows


def _options_table() -> list[dict[str, str]]:
    """``Credits``' keywords, then the option groups' fields (named ``Group.field``)."""
    return _table("option") + _table("group field")


def _fields() -> dict[str, Any]:
    """``Group.field`` -> its default, for every field of every option group."""
    return {
        f"{kind.__name__}.{f.name}": f.default
        for kind in GROUPS.values()
        for f in dataclasses.fields(kind)
    }


def _spelled(option: str) -> str:
    """A variable's option as the README names it: ``faults.on_ledger_error`` is
    ``Faults.on_ledger_error``."""
    group, _, field = option.partition(".")
    return f"{GROUPS[group].__name__}.{field}" if field else BUILDS.get(option, option)


def _parameters() -> dict[str, inspect.Parameter]:
    """``Credits``' keywords (the deprecated flat ones, taken as ``**deprecated``, excluded)."""
    return {
        name: p
        for name, p in inspect.signature(Credits.__init__).parameters.items()
        if name != "self" and p.kind is not p.VAR_KEYWORD
    }


def _named(rows: list[dict[str, str]]) -> list[str]:
    named = [name for row in rows for name in CODE.findall(row["option"])]
    assert len(named) == len(set(named)), "an option is in two rows"
    return named


def test_the_options_table_names_every_option_of_credits_and_nothing_else() -> None:
    named = set(_named(_table("option")))
    params = set(_parameters())
    assert sorted(params - named) == [], "options of Credits missing from the README table"
    assert sorted(named - params) == [], "the README table names options Credits lacks"
    assert set(GROUPS) <= params, "an option group Credits does not take"


def test_the_group_table_names_every_field_of_every_group_and_nothing_else() -> None:
    named = set(_named(_table("group field")))
    fields = set(_fields())
    assert sorted(fields - named) == [], "group fields missing from the README table"
    assert sorted(named - fields) == [], "the README table names group fields that do not exist"


def test_every_environment_variable_is_in_its_options_row() -> None:
    seen: dict[str, str] = {}
    for row in _options_table():
        options = set(CODE.findall(row["option"]))
        for variable in CODE.findall(row["variable"]):
            assert variable in VARIABLES, f"{variable} is in the README but Credits ignores it"
            option = _spelled(VARIABLES[variable][0])
            assert option in options, f"{variable} is not on {option}'s row"
            seen[variable] = row["option"]
    assert sorted(set(VARIABLES) - set(seen)) == [], "variables Credits reads, not in the README"


def _shown_default(cell: str) -> Any:
    """A default written as one literal (`True`, `credit:`), else None (prose)."""
    literal = re.fullmatch(r"`([^`]+)`", cell)
    if literal is None:
        return None
    text = literal.group(1)
    return {"True": True, "False": False}.get(text, text)


def test_simple_defaults_in_the_table_are_the_real_ones() -> None:
    defaults = {name: p.default for name, p in _parameters().items()} | _fields()
    checked = 0
    for row in _options_table():
        options = CODE.findall(row["option"])
        shown = _shown_default(row["default"])
        if len(options) != 1 or shown is None:
            continue
        real = defaults[options[0]]
        if not isinstance(real, bool | str | int | float):
            continue  # e.g. None for "built from the other options": the cell says how
        assert shown == (real if isinstance(real, bool) else str(real)), row
        checked += 1
    assert checked >= 12  # the check reads real rows, not none


def test_install_lines_name_the_package_and_its_extras() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    installs = re.findall(r"pip install '?credit-middleware(?:\[([a-z,-]+)\])?'?", README)
    assert "" in installs, "no install line for the package itself"
    named = {e for group in installs for e in group.split(",") if e}
    assert {"jwt", "postgres", "redis", "all"} <= named  # the one line needs jwt
    assert named <= extras, f"README names extras pyproject lacks: {named - extras}"
    table = set(re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| [^|]+ \|$", README, flags=re.M))
    assert table == extras - {"all"}, "the extras table and pyproject's extras differ"


def test_links_are_absolute_for_the_package_page() -> None:
    """The package index shows this README without the repository around it: a relative link
    or image would be broken there, and an in-page anchor is not kept either."""
    source = PYPROJECT["project"]["urls"]["Source"].rstrip("/")
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", README)
    assert targets
    for target in targets:
        assert target.startswith("https://"), f"not absolute: {target}"
    for target in targets:
        if target.startswith(source + "/"):
            path = re.sub(r"^/(blob|raw)/main/", "", target[len(source) :]).split("#")[0]
            assert path == "" or (ROOT / path).exists(), f"links a file that is not here: {target}"


@pytest.mark.anyio
async def test_a_token_without_exp_or_sub_is_refused_as_the_readme_says() -> None:
    """The README says ``exp`` and ``sub`` are required (not merely checked when present)."""
    import time

    import jwt

    from credit_middleware import InvalidCredentials, JWTResolver

    assert "`exp` and `sub` required" in README
    secret = "s" * 32
    resolver = JWTResolver(secret=secret)

    def scope(claims: dict[str, Any]) -> dict[str, Any]:
        token = jwt.encode(claims, secret, algorithm="HS256")
        return {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}

    soon = int(time.time()) + 600
    assert await resolver.resolve(scope({"sub": "ann", "exp": soon})) is not None
    for claims in ({"sub": "ann"}, {"exp": soon}):
        with pytest.raises(InvalidCredentials):
            await resolver.resolve(scope(claims))
