"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper

from helpers import run_cli

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y)
{
  y = Relu(x)
}
"""

CONTROL_FLOW = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool cond, float[2] x) => (float[2] y)
{
  y = If(cond) <then_branch = t () => (float[2] a) { a = Relu(x) }, else_branch = e () => (float[2] b) { b = Neg(x) }>
}
"""


def _write_cases(tmp_path, random_light):
    good = random_light("squeezenet")
    cases = {}
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    cases["not_onnx"] = (["build", tmp_path / "text.onnx"], "is not an ONNX model")
    data = good.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 3])
    cases["truncated"] = (["build", tmp_path / "truncated.onnx"], "truncated")
    empty = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(empty, tmp_path / "empty.onnx")
    cases["empty_graph"] = (["build", tmp_path / "empty.onnx"], "empty graph")
    onnx.save(onnx.parser.parse_model(DYNAMIC), tmp_path / "dynamic.onnx")
    cases["dynamic_dim"] = (["build", tmp_path / "dynamic.onnx"], "dynamic dimension 'N'.*--input-shape x=Nx4")
    onnx.save(onnx.parser.parse_model(CONTROL_FLOW), tmp_path / "if.onnx")
    cases["control_flow"] = (["build", tmp_path / "if.onnx"], "is a If \\(control flow\\)")
    (tmp_path / "profile.json").write_text(json.dumps({"schema": "nscompile.profile/1", "name": "x"}))
    cases["invalid_profile"] = (["build", good, "--device", tmp_path / "profile.json"], "profile .*profile.json")
    (tmp_path / "garbage.json").write_text("{not json")
    cases["profile_not_json"] = (["build", good, "--device", tmp_path / "garbage.json"], "not valid JSON")
    cases["missing_model"] = (["build", tmp_path / "nope.onnx"], "does not exist")
    cases["bad_bandwidth"] = (["build", good, "--bandwidth", "5:1:3"], "bad --bandwidth")
    cases["bad_load"] = (["build", good, "--load", "0.5,2"], "bad --load")
    cases["bad_objective"] = (["build", good, "--objective", "speed"], "unknown objective 'speed'")
    return cases


CASES = ["not_onnx", "truncated", "empty_graph", "dynamic_dim", "control_flow", "invalid_profile", "profile_not_json",
         "missing_model", "bad_bandwidth", "bad_load", "bad_objective"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, random_light):
    import re

    args, pattern = _write_cases(tmp_path, random_light)[case]
    out = tmp_path / "out"
    result = run_cli(*args, "-o", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_existing_foreign_directory_is_not_replaced(tmp_path, random_light):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    result = run_cli("build", random_light("squeezenet"), "-o", out, "--no-verify")
    assert result.returncode == 2 and "is not an nscompile build" in result.stderr
    assert (out / "thesis.tex").read_text() == "keep me"


@pytest.mark.slow
def test_build_then_inspect(tmp_path, random_light):
    out = tmp_path / "sq"
    result = run_cli("build", random_light("squeezenet"), "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["verification_max_abs_diff"]
    shown = run_cli("inspect", out, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert len(doc["layers"]) == 66 and {"device_ms", "cloud_ms", "output_kb"} <= set(doc["layers"][0])
    assert doc["table"] == json.loads((out / "plan.json").read_text())["table"]
    text = run_cli("inspect", out)
    assert text.returncode == 0 and "decision map" in text.stdout
    # Rebuilding over an earlier build replaces it.
    again = run_cli("build", random_light("squeezenet"), "-o", out, "--no-verify", "--objective", "energy")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "plan.json").read_text())["grid"]["objective"] == "energy"
    assert run_cli("inspect", tmp_path).returncode == 2
