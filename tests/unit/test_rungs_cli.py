"""``python -m scaling.rungs``: the rung table, --json, and the memory/cost report."""

from __future__ import annotations

import json
import subprocess
import sys

from scaling import costs
from scaling.models.registry import get_rung, list_rungs
from scaling.rungs.__main__ import main


def test_json_lists_every_tower_with_params_and_flops(capsys):
    assert main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert {"name", "tower", "params", "gflops_fwd"} <= set(row)
        assert row["tower"] in ("vision", "text", "mim")
        spec = getattr(get_rung(row["name"]), row["tower"])
        assert row["params"] == costs.params(spec)
        assert row["gflops_fwd"] == costs.forward_flops(spec) / 1e9
    towers = {(r["name"], r["tower"]) for r in rows}
    for rung in list_rungs():
        assert (rung.name, "mim") in towers
        assert ((rung.name, "vision") in towers) == rung.is_clip == ((rung.name, "text") in towers)


def test_json_proxy_and_table_output(capsys):
    assert main(["--json", "--proxy"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert (
        all(r["proxy"] for r in rows)
        and max(r["params"] for r in rows if r["tower"] != "text") < 2e6
    )
    assert main([]) == 0
    table = capsys.readouterr().out
    for header in ("tower", "depth", "width", "heads", "MLP", "params", "GFLOPs"):
        assert header in table
    assert "EVA-CLIP-18B" in table and "17.63B" in table


def test_rung_report_for_the_papers_18b_setting(capsys):
    assert main(["--rung", "18B", "--gpus", "360", "--gpu", "a100-40gb", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == "EVA-CLIP-18B" and report["fits"] is True
    assert report["micro_batch"] * 360 == report["global_batch"] == 108_000  # the recipe's batch
    assert set(report["memory_bytes"]) >= {"weights", "grads", "optimizer", "activations", "total"}
    assert report["gpu_hours"] == costs.gpu_hours(report["train_flops"], "a100-40gb", 0.4)
    assert main(["--rung", "18B", "--gpus", "360", "--gpu", "a100-40gb"]) == 0
    text = capsys.readouterr().out
    assert "fits" in text and "GPU-hours" in text and "GiB" in text


def test_implied_mfu_from_a_given_wall_time(capsys):
    assert main(["--rung", "18B", "--gpus", "360", "--wall-days", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = costs.implied_mfu(report["train_flops"], 360, 30 * 24, "a100-40gb")
    assert report["implied_mfu"] == expected and 0 < expected < 1
    assert main(["--rung", "18B", "--gpus", "360"]) == 0
    assert "wall time" in capsys.readouterr().out  # not published: said so


def test_user_errors_exit_2(capsys):
    assert main(["--rung", "ViT-Z"]) == 2
    assert "unknown rung 'ViT-Z'" in capsys.readouterr().err
    assert main(["--rung", "EVA02-L", "--kind", "clip"]) == 2
    assert "MIM-only" in capsys.readouterr().err
    assert main(["--rung", "B16", "--mfu", "2"]) == 2
    assert "mfu" in capsys.readouterr().err


def test_module_entry_point_runs_without_torch():
    probe = (
        "import sys; from scaling.rungs.__main__ import main; rc = main(['--json']); "
        "assert rc == 0 and 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "scaling.rungs", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)[0]["name"] == "EVA02-CLIP-B-16"


def test_models_cli_and_ladder_share_the_stage_defaults(capsys, tmp_path):
    """Checkpointing, precision, ZeRO stage and GPUs come from the same stage config in both."""
    from scaling.ladder import plan_ladder
    from scaling.ladder.estimate import plan_rows

    plan = plan_ladder("L14", "E14", proxy=False, runs_dir=tmp_path, allow_missing_teacher=True)
    rows = {r["stage"]: r for r in plan_rows(plan)}
    for stage, rung, kind in (("clip@E14", "E14", "clip"), ("mim@E14", "E14", "mim")):
        row = rows[stage]
        assert main(["--rung", rung, "--kind", kind, "--teacher", "L14", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        for key in ("grad_checkpointing", "precision", "zero_stage", "micro_batch"):
            assert report[key] == row[key], (stage, key)
        assert report["gpus"] == row["processes"] and report["gpu"] == row["gpu"]
        assert abs(report["memory_bytes"]["total"] / 2**30 - row["memory_per_gpu_gb"]) < 1e-9
    # and the flag overrides the recipe's default either way
    assert main(["--rung", "E14", "--no-grad-checkpointing", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["grad_checkpointing"] is False
    assert off["memory_bytes"]["activations"] > 5 * rows["clip@E14"]["memory_gb"]["activations"] * 2**30
