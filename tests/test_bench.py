"""The serving benchmark on the live stack: every path measured, the ratios stated, and the report
section it feeds. It prints figures; what they are is this machine's business, not a test's."""

import dataclasses
import json

import jsonschema

from twinbench.bench import bench_stack, ratios, summary
from twinbench.datasets import load_dataset
from twinbench.report import SCHEMA_FILE, build_results, markdown
from twinbench.tensors import infer_request


def test_bench_measures_each_path_and_its_figures_reach_the_report(stack, trained):
    job, _ = trained["torch"]
    export = next(e for e in job.exports if e.format == "onnx")
    request = infer_request(
        export.model_name, load_dataset("mnist-5k").test.x[:1]
    ).SerializeToString()
    before = stack.extra_env.get("TWINBENCH_DYNAMIC_BATCHING")
    figures = bench_stack(stack, {export.model_name: request}, (1, 4), 0.5, report=lambda f: None)
    assert stack.extra_env.get("TWINBENCH_DYNAMIC_BATCHING") == before  # left as it was
    paths = {(f.path[0], f.concurrency) for f in figures}
    assert paths == {(p, c) for p in "bcd" for c in (1, 4)}
    for f in figures:
        assert f.requests > 0 and 0 < f.p50_ms <= f.p99_ms and f.rps > 0, f
        assert 0 < f.client_cpu <= 1.5, f
    lines = summary(figures)
    assert any("the gateway adds" in line for line in lines)
    assert any("dynamic batching at concurrency 4" in line for line in lines)

    (short,) = ratios(figures)
    assert short["model"] == export.model_name and short["concurrency"] == 4
    assert short["batching_gain"] == short["batched_rps"] / short["unbatched_rps"]
    cost = {"figures": [dataclasses.asdict(f) for f in figures], "summary": [short], "note": "test"}
    results = build_results([job], [], {"users": 1, "duration": "0s", "batch_size": 1,
                                        "host": stack.gateway_address}, "test", cost)  # fmt: skip
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    text = markdown(results, {})
    assert "## Serving cost: test" in text and "d gateway + batching" in text
