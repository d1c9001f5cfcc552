"""``--show-config``: every key of a stage's resolved config with the layer that last set it
(schema default, recipe file and line, user or ladder file and line, command line, the planner)."""

from __future__ import annotations

import re
from pathlib import Path

from scaling import paths
from scaling.ladder.cli import main as ladder_main
from scaling.train.__main__ import main as train_main


def _origins(text: str) -> dict[str, tuple[str, str]]:
    """key -> (value, origin) from ``key = value  # origin`` lines."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+) = (.*?)\s+# (.+)", line)
        assert m, line
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def _line_of(origin: str) -> str:
    """The text of the file line an origin ``FILE:LINE`` names (file relative to the checkout)."""
    file, line = origin.rsplit(":", 1)
    path = Path(file) if Path(file).is_absolute() else paths.REPO_ROOT / file
    return path.read_text().splitlines()[int(line) - 1]


def test_ladder_show_config_names_each_layer(capsys, tmp_path):
    assert ladder_main(["--from", "E14", "--to", "18B", "--proxy", "--runs-dir", str(tmp_path),
                        "--show-config", "clip@18B", "clip@18B.train.seed=5"]) == 0
    shown = _origins(capsys.readouterr().out)
    assert shown["train.seed"] == ("5", "command line")
    assert shown["loss.init_temperature"][1] == "schema default (scaling/config_schema.py)"
    # a recipe file: the stage kind's, the rung's, the proxy's, each with the line of the key
    for key, file in (("optim.grad_clip", "experiments/recipes/clip.yaml"),
                      ("loss.temperature", "experiments/recipes/clip/18B.yaml"),
                      ("train.batch_size", "experiments/recipes/proxy.yaml")):
        origin = shown[key][1]
        assert origin.startswith(file + ":"), (key, origin)
        assert _line_of(origin).strip().startswith(key.split(".")[-1] + ":"), (key, _line_of(origin))
    # the ladder file's proxy layer for this stage, and what the planner sets
    value, origin = shown["optim.warmup_samples"]
    assert origin.startswith("experiments/ladders/eva.yaml:") and "clip@18B" in _line_of(origin)
    assert f"warmup_samples: {value}" in _line_of(origin)
    assert shown["inputs.init_vision"][1] == "ladder plan (folders, tracking, inputs)"
    assert shown["out_dir"][1].startswith("ladder plan") and shown["out_dir"][0].startswith(str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing was run or written


def test_ladder_show_config_of_a_stage_not_on_the_path_exits_2(capsys, tmp_path):
    assert ladder_main(["--from", "E14", "--to", "18B", "--proxy", "--runs-dir", str(tmp_path),
                        "--show-config", "clip@L14"]) == 2
    err = capsys.readouterr().err
    assert "no stage 'clip@L14'" in err and "clip@18B" in err


def test_train_show_config_names_user_file_line_and_command_line(capsys, tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("# my settings\noptim:\n  lr: 0.002\n")
    assert train_main(["--stage", "mim", "--rung", "B16", "--config", str(user), "--show-config",
                       "train.seed=9", "--out", str(tmp_path / "out")]) == 0
    shown = _origins(capsys.readouterr().out)
    # the file as given, or relative to the checkout where the temporary folder lies inside it
    value, where = shown["optim.lr"]
    assert value == "0.002" and where.endswith(":3") and (paths.REPO_ROOT / where[:-2]).resolve() == user.resolve()
    assert shown["train.seed"] == ("9", "command line") and shown["out_dir"][1] == "command line"
    assert shown["loss.mask_ratio"][1].startswith("experiments/recipes/")
    assert shown["eval.points"][1] == "schema default (scaling/config_schema.py)"
    assert not (tmp_path / "out").exists()
