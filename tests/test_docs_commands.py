"""Every ``lakd`` command that README, docs/ and every ``--help`` show parses with today's CLI, and every config file
and script they name exists (issue 34: a help text cited a config that did not exist)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lakd.cli import build_parser
from lakd.resources import locate

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_lines(text: str) -> list[str]:
    """The command lines of a markdown file's ```bash blocks, continuations joined."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.strip().removeprefix("$ "))
    return lines


def lakd_commands(lines: list[str]) -> list[list[str]]:
    """``lakd ...`` invocations (after env assignments, up to a pipe, ``&&`` or ``;``) as argv lists."""
    found = []
    for line in lines:
        line = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], line)  # [--opt a|b]: the first
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # LAKD_DATA=... lakd ...
            if words[:1] == ["lakd"] or words[:3] == ["python", "-m", "lakd"]:
                found.append(words[1:] if words[0] == "lakd" else words[3:])
    return found


def help_examples() -> dict[str, list[list[str]]]:
    parser = build_parser()
    out = {}
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            out[name] = lakd_commands((sub.epilog or "").splitlines())
    return out


DOC_COMMANDS = [(doc.name, argv) for doc in DOCS for argv in lakd_commands(shell_lines(doc.read_text()))]
HELP_COMMANDS = [(f"lakd {name} --help", argv) for name, cmds in help_examples().items() for argv in cmds]


def check_parses(argv: list[str]) -> None:
    parser = build_parser()
    try:
        args, leftover = parser.parse_known_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"does not parse: lakd {' '.join(argv)}") from exc
    stray = [a for a in leftover if a.startswith("-") or "=" not in a]
    assert not stray, f"unknown arguments {stray} in: lakd {' '.join(argv)}"
    for config in getattr(args, "config", None) or []:
        if "<" not in config and "RUN" not in config and "DIR" not in config:
            assert locate(config).is_file() or (ROOT / config).is_file(), f"config '{config}' does not exist"


def test_there_are_commands_to_check() -> None:
    assert len(DOC_COMMANDS) > 30 and len(HELP_COMMANDS) >= 8


@pytest.mark.parametrize(("where", "argv"), DOC_COMMANDS + HELP_COMMANDS,
                         ids=[f"{w}: {' '.join(a)[:60]}" for w, a in DOC_COMMANDS + HELP_COMMANDS])
def test_every_shown_command_parses_and_names_files_that_exist(where: str, argv: list[str]) -> None:
    check_parses(argv)


def test_every_config_and_script_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCS:
        text = re.sub(r"(mdistiller|RepDistiller|torchdistill|timm) `[^`]*`", "", doc.read_text())  # theirs
        for path in set(re.findall(r"\b((?:configs|examples|benchmarks)/[\w./-]+\.(?:yaml|py|sh))\b", text)):
            if not (ROOT / path).exists() and not locate(path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


@pytest.mark.parametrize("command", sorted(help_examples()))
def test_every_help_runs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lakd.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: lakd" in capsys.readouterr().out


def fence_problems(text: str) -> list[str]:
    """Code fences that break rendering: text after a closing fence, a fence left open at the end of the file."""
    problems, open_at = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped.startswith("```"):
            continue
        rest = stripped[3:]
        if open_at:
            if rest:
                problems.append(f"line {number}: text after a closing fence: {stripped[:40]!r}")
            open_at = 0
        elif not rest or re.fullmatch(r"[\w+-]+", rest):
            open_at = number
        else:
            problems.append(f"line {number}: a fence that opens with {rest[:30]!r}, not a language")
    if open_at:
        problems.append(f"line {open_at}: a fence never closed")
    return problems


def test_fence_problems_are_found() -> None:
    assert fence_problems("```bash\nls\n```\n") == []
    closed_with_text = fence_problems("```bash\nls\n``` Teachers, from\n")
    assert closed_with_text == ["line 3: text after a closing fence: '``` Teachers, from'"]
    assert fence_problems("```bash\nls\n") == ["line 1: a fence never closed"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_code_fence_opens_and_closes_cleanly(doc: Path) -> None:
    assert not fence_problems(doc.read_text()), fence_problems(doc.read_text())
