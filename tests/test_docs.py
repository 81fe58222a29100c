"""README.md and docs/ say only what holds: every relative link reaches a file of the repository
(and a heading of it, where it names one), every quoted `twinbench ...` command names subcommands
and options that exist, every quoted `make` target is in the Makefile, and every quoted path or
module of the repository exists. Fast: it reads files and builds the CLI's parser, no servers."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from twinbench.cli.main import parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Top-level folders whose paths, quoted in the text, must exist.
REPOSITORY_PATH = re.compile(
    r"^(?:twinbench|services|tests|deploy|loadtests|protos|examples|requirements|docs|\.ci)/"
    r"[\w./-]*$"
)
# Dotted names of the package's modules (or of a name defined in one), as `python -m` takes them.
MODULE_NAME = re.compile(r"^(?:twinbench|services)(?:\.\w+)+$")
# Dotted names that are protobuf packages, not Python modules.
PROTO_PACKAGES = ("twinbench.v1",)
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}
SEPARATORS = {";", "&&", "||", "&", "|"}


@dataclass
class Document:
    """A Markdown file split into what the checks read: prose (code blocks blanked out, so
    that line numbers still count), its code blocks, and its headings' anchors."""

    path: Path
    prose: str
    blocks: list[tuple[int, str, str]] = field(default_factory=list)  # line, language, text
    anchors: set[str] = field(default_factory=set)

    def line_of(self, offset: int) -> int:
        return self.prose.count("\n", 0, offset) + 1


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def read(path: Path) -> Document:
    prose: list[str] = []
    blocks: list[tuple[int, str, str]] = []
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fence: str | None = None
    block: list[str] = []
    start, language = 0, ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence, language, start, block = opened.group(1), opened.group(2).lower(), number, []
            prose.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                blocks.append((start, language, "\n".join(block)))
                fence = None
            else:
                block.append(line)
            prose.append("")
        else:
            prose.append(line)
            heading = HEADING.match(line)
            if heading:
                anchor = slug(heading.group(2))
                count = seen.get(anchor, 0)
                seen[anchor] = count + 1
                anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return Document(path, "\n".join(prose), blocks, anchors)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# Links


def link_problems(doc: Document) -> Iterator[str]:
    for match in LINK.finditer(doc.prose):
        target = match.group(1)
        where = f"{rel(doc.path)}:{doc.line_of(match.start())}"
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.path.parent / path_part).resolve() if path_part else doc.path
        try:
            resolved.relative_to(ROOT)
        except ValueError:
            yield f"{where}: link {target!r} points outside the repository"
            continue
        if not resolved.exists():
            yield f"{where}: link {target!r}: no file {path_part!r}"
            continue
        if anchor:
            if resolved.suffix != ".md":
                yield f"{where}: link {target!r}: an anchor into a file that is not Markdown"
            elif anchor not in read(resolved).anchors:
                yield f"{where}: link {target!r}: no heading #{anchor} in {rel(resolved)}"


# Commands


def code_spans(doc: Document) -> Iterator[tuple[int, str]]:
    for match in CODE_SPAN.finditer(doc.prose):
        yield doc.line_of(match.start()), " ".join(match.group(2).split())


def shell_lines(doc: Document) -> Iterator[tuple[int, str]]:
    """Every command line of the shell blocks (continuations joined), then the code spans."""
    for start, language, text in doc.blocks:
        if language not in SHELL_LANGUAGES:
            continue
        pending, first = "", 0
        for offset, line in enumerate(text.splitlines(), start=1):
            if not pending:
                first = start + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield first, pending + line
            pending = ""
        if pending:
            yield first, pending
    yield from code_spans(doc)


def segments(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line: split at ; && || & |, environment assignments and
    placeholders (`...`, `[`, `]`) left out."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return
    current: list[str] = []
    for token in tokens:
        ends = token[-1:] in {";", "&"} and token not in SEPARATORS
        token = token[:-1] if ends else token
        if token in SEPARATORS:
            yield current
            current = []
            continue
        token = token.strip("[]")
        if token and token != "..." and not (not current and ASSIGNMENT.match(token)):
            current.append(token)
        if ends:
            yield current
            current = []
    yield current


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    subparsers = p._subparsers
    if subparsers is None:
        return None
    for action in subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def command_problems(words: list[str], root: argparse.ArgumentParser) -> Iterator[str]:
    """What in `twinbench WORDS...` the parser does not have: a subcommand or an option."""
    p, name, i = root, "twinbench", 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and word != "-":
            option = word.split("=", 1)[0]
            action = p._option_string_actions.get(option)
            if action is None:
                yield f"`{name}` has no option {option}"
            elif action.nargs != 0 and "=" not in word:
                i += 1  # its value
        else:
            choices = subcommands(p)
            if choices is not None:
                if word not in choices:
                    yield f"`{name}` has no subcommand {word!r} (it has {', '.join(choices)})"
                    return
                p, name = choices[word], f"{name} {word}"
        i += 1


def make_targets() -> set[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s:=#][^:=]*?)\s*::?(?!=)", line)
        if rule and not rule.group(1).startswith("."):
            targets.update(t for t in rule.group(1).split() if "$" not in t)
    return targets


def module_problem(name: str) -> str | None:
    """None when `name` is a module of the repository, or a name defined at the top of one."""
    if name.startswith(PROTO_PACKAGES):
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base.with_suffix(".py")
        if not source.exists():
            source = base / "__init__.py"
        if not source.exists():
            continue
        rest = parts[cut:]
        if not rest:
            return None
        if len(rest) == 1 and rest[0] in defined_names(source):
            return None
        return f"{'.'.join(parts[:cut])} defines no {'.'.join(rest)}"
    return f"no module {name}"


def defined_names(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def quoted_problems(doc: Document, root: argparse.ArgumentParser) -> Iterator[str]:
    targets = make_targets()
    for line, text in shell_lines(doc):
        where = f"{rel(doc.path)}:{line}"
        for words in segments(text):
            if not words:
                continue
            if words[0] == "twinbench":
                for problem in command_problems(words[1:], root):
                    yield f"{where}: {problem} (in {text!r})"
            elif words[0] == "make":
                for word in words[1:]:
                    if not word.startswith("-") and "=" not in word and word not in targets:
                        yield f"{where}: the Makefile has no target {word!r} (in {text!r})"
            for flag, module in zip(words, words[1:], strict=False):
                if flag == "-m" and MODULE_NAME.match(module):
                    problem = module_problem(module)
                    if problem:
                        yield f"{where}: {problem} (in {text!r})"
    for line, text in code_spans(doc):
        where = f"{rel(doc.path)}:{line}"
        if REPOSITORY_PATH.match(text) and not (ROOT / text).exists():
            yield f"{where}: no file or folder {text}"
        elif MODULE_NAME.match(text):
            problem = module_problem(text)
            if problem:
                yield f"{where}: {problem}"
    for start, language, text in doc.blocks:
        if language != "python":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and MODULE_NAME.match(node.module):
                for alias in node.names:
                    problem = module_problem(f"{node.module}.{alias.name}")
                    if problem:
                        yield f"{rel(doc.path)}:{start + node.lineno}: {problem}"


def problems(path: Path) -> list[str]:
    doc = read(path)
    return [*link_problems(doc), *quoted_problems(doc, parser())]


@pytest.mark.parametrize("path", DOCUMENTS, ids=rel)
def test_links_commands_and_paths_resolve(path):
    found = problems(path)
    assert not found, "\n".join(found)


def test_every_page_is_reachable_from_readme():
    """README.md links the guide's index, docs/README.md, and every page of docs/ is linked from
    one of the two."""
    index = ROOT / "docs" / "README.md"
    linked: set[Path] = set()
    for page in (ROOT / "README.md", index):
        doc = read(page)
        for match in LINK.finditer(doc.prose):
            target = match.group(1).partition("#")[0]
            if target and not SCHEME.match(target):
                linked.add((page.parent / target).resolve())
    unlinked = [rel(p) for p in DOCUMENTS if p != ROOT / "README.md" and p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md or docs/README.md: {unlinked}"


def test_the_checks_catch_what_they_should(tmp_path, monkeypatch):
    """A broken link, a missing heading, an unknown subcommand or option, a missing make target,
    path or module: each one is reported (so a passing run means something)."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "Makefile").write_text(".PHONY: demo\ndemo: venv\n\t@true\n")
    (tmp_path / "twinbench").mkdir()
    (tmp_path / "twinbench" / "tool.py").write_text("def helper():\n    pass\n")
    (tmp_path / "other.md").write_text("# Title\n\n## A section: `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#a-section-code) [file](missing.md) [anchor](other.md#nowhere)\n"
        "[outside](../elsewhere.md) [web](https://example.org/x.md) [self](#page)\n\n"
        "Run `twinbench compare --repeats 5` or `twinbench compar` or\n"
        "`twinbench bench training --no-such-option 3`; then `make demo` and `make nothing`.\n"
        "See `twinbench/tool.py`, `twinbench/gone.py`, `twinbench.tool.helper` and\n"
        "`twinbench.tool.missing`.\n\n"
        "```sh\n"
        "TWINBENCH_TRAIN_THREADS=1 twinbench train --framework both \\\n"
        "    --epochs 3 --bogus 1   # a comment, not an option: --also-bogus\n"
        "twinbench jobs; twinbench modelz\n"
        "python -m twinbench.tool && python -m twinbench.absent\n"
        "# twinbench nonsense in a comment\n"
        "```\n\n"
        "```python\nfrom twinbench.tool import helper, nothing\n```\n\n"
        "```\n# not a heading\n```\n[heading in code](#not-a-heading)\n"
    )
    found = "\n".join(problems(page))
    for expected in [
        "no file 'missing.md'",
        "no heading #nowhere in other.md",
        "'../elsewhere.md' points outside the repository",
        "`twinbench` has no subcommand 'compar'",
        "`twinbench bench training` has no option --no-such-option",
        "the Makefile has no target 'nothing'",
        "no file or folder twinbench/gone.py",
        "twinbench.tool defines no missing",
        "`twinbench train` has no option --bogus",
        "`twinbench` has no subcommand 'modelz'",
        "no module twinbench.absent",
        "twinbench.tool defines no nothing",
        "no heading #not-a-heading in page.md",
    ]:
        assert expected in found, f"not reported: {expected}\nreported:\n{found}"
    for fine in [
        "no heading #a-section-code",
        "example.org",
        "no heading #page ",
        "no option --repeats",
        "no option --framework",
        "no option --epochs",
        "no target 'demo'",
        "no file or folder twinbench/tool.py",
        "defines no helper",
        "no option --also-bogus",
        "subcommand 'nonsense'",
        "subcommand 'jobs'",
        "no module twinbench.tool ",
    ]:
        assert fine not in found, f"reported, but it holds: {fine}\nreported:\n{found}"
