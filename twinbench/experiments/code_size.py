"""The amount of code each framework needs for the same task, counted in the example scripts.

Counted with Python's own tokenizer and parser, so the figures mean the same for every script:
logical lines (statements as the tokenizer ends them, however many physical lines they span),
statements (the parser's, compound ones included), and tokens (names, operators, literals;
no comments, indentation or line ends). Comment lines, docstring lines and blank lines are
counted apart: they are not code, but they are part of what a reader reads.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

# The example scripts live beside the package in a checkout; an installed package has none.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Named so that neither shadows a package when run as a script: a file named keras.py would be
# imported by its own `import keras`, torchvision imports a module named `pytorch`, and jax.py
# would shadow jax.
FRAMEWORK_SCRIPTS = {"torch": "in_pytorch.py", "tf": "in_keras.py", "jax": "in_jax.py"}
# What a user writes in each: the TensorFlow scripts are Keras, the JAX ones Flax (NNX) and Optax.
SCRIPT_LABELS = {"torch": "PyTorch", "tf": "Keras", "jax": "JAX"}
LAYOUT_TOKENS = {
    tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
    tokenize.ENDMARKER, tokenize.ENCODING,
}  # fmt: skip


@dataclass(frozen=True)
class CodeSize:
    logical_lines: int
    statements: int
    tokens: int
    physical_lines: int  # every line of the file
    comment_lines: int  # lines holding only a comment
    docstring_lines: int
    blank_lines: int
    imports: int  # import statements (each `import a, b` or `from a import b, c` is one)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_code(source: str) -> CodeSize:
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines()
    code_rows: set[int] = set()
    comment_rows: set[int] = set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comment_rows.add(tok.start[0])
        elif tok.type not in LAYOUT_TOKENS:
            code_rows.update(range(tok.start[0], tok.end[0] + 1))
    tree = ast.parse(source)
    docstring_rows = _docstring_rows(tree)
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)]
    docstrings = sum(1 for node in statements if _is_docstring(node))
    return CodeSize(
        logical_lines=sum(1 for t in tokens if t.type == tokenize.NEWLINE) - docstrings,
        statements=len(statements) - docstrings,
        tokens=sum(
            1 for t in tokens if t.type not in LAYOUT_TOKENS and t.start[0] not in docstring_rows
        ),
        physical_lines=len(lines),
        comment_lines=len(comment_rows - code_rows),
        docstring_lines=len(docstring_rows),
        blank_lines=sum(1 for line in lines if not line.strip()),
        imports=sum(isinstance(node, (ast.Import, ast.ImportFrom)) for node in statements),
    )


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _docstring_rows(tree: ast.Module) -> set[int]:
    """The rows of the docstrings of the module, its classes and its functions."""
    rows: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and _is_docstring(node.body[0]):
                first = node.body[0]
                rows.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return rows


def example_tasks(root: Path = EXAMPLES) -> list[str]:
    """Tasks with a script per framework, in name order."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if all((p / script).is_file() for script in FRAMEWORK_SCRIPTS.values())
    )


def compare_task(
    task: str, root: Path = EXAMPLES, frameworks: list[str] | None = None
) -> dict | None:
    """The task's scripts (every framework's, or those named) with their counts, as results.json
    stores them; None: no scripts."""
    if task not in example_tasks(root):
        return None
    scripts = {}
    for framework, name in FRAMEWORK_SCRIPTS.items():
        if frameworks is not None and framework not in frameworks:
            continue
        source = (root / task / name).read_text()
        scripts[framework] = {
            "path": f"examples/{task}/{name}",
            "source": source,
            "size": count_code(source).as_dict(),
        }
    return {"task": task, "scripts": scripts}


MEASURES = (
    ("logical_lines", "logical lines"),
    ("statements", "statements"),
    ("tokens", "tokens"),
    ("imports", "import statements"),
    ("comment_lines", "comment lines"),
    ("docstring_lines", "docstring lines"),
    ("blank_lines", "blank lines"),
    ("physical_lines", "physical lines, all"),
)


def size_headers(code: dict) -> list[str]:
    """The columns of size_rows: a measure, each framework's count, the first's ratio to each other's."""
    labels = [SCRIPT_LABELS[f] for f in code["scripts"]]
    return ["measure", *labels, *(f"{labels[0]} / {other}" for other in labels[1:])]


def size_rows(code: dict) -> list[list[str]]:
    """[measure, PyTorch, Keras, JAX, PyTorch / Keras, PyTorch / JAX] (the frameworks the code
    holds, in that order) for the report and the command line."""
    sizes = [script["size"] for script in code["scripts"].values()]
    rows = []
    for key, label in MEASURES:
        counts = [size[key] for size in sizes]
        ratios = [f"{counts[0] / b:.2f}" if b else "-" for b in counts[1:]]
        rows.append([label, *(str(c) for c in counts), *ratios])
    return rows
