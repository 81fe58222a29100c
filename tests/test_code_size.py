"""The code-size counts: logical lines, statements and tokens by Python's own tokenizer and parser."""

from __future__ import annotations

from twinbench.experiments.code_size import compare_task, count_code, size_headers, size_rows

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


def test_compare_task_reads_every_frameworks_script():
    code = compare_task("mnist_cnn")
    assert code is not None
    assert list(code["scripts"]) == ["torch", "tf", "jax"]
    assert code["scripts"]["torch"]["path"] == "examples/mnist_cnn/in_pytorch.py"
    assert code["scripts"]["jax"]["path"] == "examples/mnist_cnn/in_jax.py"
    assert "from flax import nnx" in code["scripts"]["jax"]["source"]
    headers = size_headers(code)
    assert headers == ["measure", "PyTorch", "Keras", "JAX", "PyTorch / Keras", "PyTorch / JAX"]
    rows = size_rows(code)
    assert all(len(r) == len(headers) for r in rows)
    assert [r[0] for r in rows[:3]] == ["logical lines", "statements", "tokens"]
    for row in rows[:3]:
        torch_count, tf_count, jax_count = (int(c) for c in row[1:4])
        assert min(torch_count, tf_count, jax_count) > 0
        assert (
            row[4] == f"{torch_count / tf_count:.2f}" and row[5] == f"{torch_count / jax_count:.2f}"
        )
    assert compare_task("no-such-task") is None


def test_compare_task_keeps_the_compared_frameworks_only():
    pair = compare_task("lenet5", frameworks=["torch", "jax"])
    assert pair is not None and list(pair["scripts"]) == ["torch", "jax"]
    assert size_headers(pair) == ["measure", "PyTorch", "JAX", "PyTorch / JAX"]
    alone = compare_task("lenet5", frameworks=["jax", "jax"])  # an A/A comparison
    assert alone is not None and size_headers(alone) == ["measure", "JAX"]
    assert all(len(row) == 2 for row in size_rows(alone))


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
