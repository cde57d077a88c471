"""docs/architecture.md names real code: every module path it mentions exists, every
``module: name`` is defined in that module, and every ``Class.member`` is defined in the class's
module. A rename that leaves the document behind fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
APP = ROOT / "app"

CODE = re.compile(r"`([^`]+)`")
PATH = re.compile(r"^(?:app/)?[\w/]+\.py$|^app/[\w/]*$")
QUALIFIED = re.compile(r"^([A-Z]\w+)\.(_?_?[a-z]\w*)$")


def _spans() -> list[str]:
    text = re.sub(r"^```.*?^```", "", DOC.read_text(encoding="utf-8"), flags=re.M | re.S)
    return [" ".join(span.split()) for span in CODE.findall(text)]


def _resolve(path: str) -> Path | None:
    """A path as the document writes it: from the repository root, or short under app/dimse
    (``engine/pool.py``)."""
    for candidate in (ROOT / path, APP / "dimse" / path):
        if candidate.exists():
            return candidate
    return None


def _defines(source: str, name: str) -> bool:
    quoted = re.escape(name)
    pattern = rf"^\s*(?:async def|def|class) {quoted}\b|^\s*{quoted}\s*[:=]"
    return re.search(pattern, source, re.M) is not None


def _sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in APP.rglob("*.py")}


def test_every_module_path_exists() -> None:
    paths = [s.split(":")[0].strip() for s in _spans() if PATH.match(s.split(":")[0].strip())]
    assert len(paths) > 30
    missing = [p for p in paths if _resolve(p) is None]
    assert not missing, missing


def test_every_name_given_with_its_module_is_defined_there() -> None:
    checked = 0
    problems = []
    for span in _spans():
        if ":" not in span or not PATH.match(span.split(":")[0].strip()):
            continue
        path, names = span.split(":", 1)
        module = _resolve(path.strip())
        assert module is not None, path
        source = module.read_text(encoding="utf-8")
        for name in re.split(r"[,→ ]+", names):
            name = name.strip()
            if not name:
                continue
            last = name.split(".")[-1]
            checked += 1
            if not _defines(source, last):
                problems.append(f"{path}: {name}")
    assert checked > 5
    assert not problems, problems


def test_every_class_member_is_defined_in_its_class_module() -> None:
    sources = _sources()
    checked = 0
    problems = []
    for span in _spans():
        match = QUALIFIED.match(span.strip().rstrip("()"))
        if match is None:
            continue
        cls, member = match.groups()
        homes = [text for text in sources.values() if re.search(rf"^class {cls}\b", text, re.M)]
        checked += 1
        if not any(_defines(text, member) or re.search(rf"self\.{member}\b", text)
                   for text in homes):
            problems.append(span)
    assert checked > 10
    assert not problems, problems
