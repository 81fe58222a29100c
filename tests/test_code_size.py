"""The code-size counts: logical lines, statements and tokens by Python's own tokenizer and parser."""

from __future__ import annotations

from twinbench.experiments.code_size import compare_task, count_code, size_rows

SOURCE = '''"""A module docstring,
over two lines."""

import os, sys  # two modules, one statement
from pathlib import Path

# a comment line


def f(x):
    """One line."""
    total = (x +
             1)  # one logical line over two physical ones
    if total: return total; pass
'''


def test_counts_logical_lines_statements_and_tokens():
    size = count_code(SOURCE)
    assert size.logical_lines == 5  # the tokenizer's NEWLINEs: `if ...; pass` is one line
    assert size.statements == 7  # import, from, def, assignment, if, return, pass
    assert size.imports == 2
    assert size.comment_lines == 1
    assert size.docstring_lines == 3
    assert size.blank_lines == 4
    assert size.physical_lines == len(SOURCE.splitlines())
    # import os , sys | from pathlib import Path | def f ( x ) : | total = ( x + 1 )
    # | if total : return total ; pass
    assert size.tokens == 4 + 4 + 6 + 7 + 7


def test_comments_and_docstrings_do_not_count_as_code():
    bare = count_code("x = 1\n")
    commented = count_code('"""Doc."""\n# why\nx = 1  # what\n\n')
    for key in ("logical_lines", "statements", "tokens"):
        assert getattr(bare, key) == getattr(commented, key)


def test_compare_task_reads_both_scripts():
    code = compare_task("mnist_cnn")
    assert code is not None
    assert set(code["scripts"]) == {"torch", "tf"}
    assert code["scripts"]["torch"]["path"] == "examples/mnist_cnn/in_pytorch.py"
    rows = size_rows(code)
    assert [r[0] for r in rows[:3]] == ["logical lines", "statements", "tokens"]
    assert all(int(r[1]) > 0 and int(r[2]) > 0 for r in rows[:3])
    assert compare_task("no-such-task") is None


def test_the_report_shows_sizes_and_both_scripts_side_by_side():
    import json

    import jsonschema

    from twinbench.api import trainer_pb2 as tpb
    from twinbench.experiments.report import code_html, code_markdown
    from twinbench.experiments.results import SCHEMA_FILE, _code_of

    job = tpb.Job(spec=tpb.JobSpec(model="lenet5"))
    results = _code_of({"torch": ("torch", [job]), "tf": ("tf", [job])})
    schema = json.loads(SCHEMA_FILE.read_text())["properties"]["code"]
    jsonschema.validate(results["code"], schema)
    page = code_html(results)
    assert page.count("<pre") == 2 and "<tr><td" in page  # one row, one cell per framework
    assert "nn.AvgPool2d(2)" in page and "keras.layers.AveragePooling2D(2)" in page
    text = code_markdown(results)
    assert text.count("```python") == 2 and "examples/lenet5/in_keras.py" in text
    other = tpb.Job(spec=tpb.JobSpec(model="resnet50"))  # no example scripts: no section
    assert _code_of({"torch": ("torch", [other])}) == {}
