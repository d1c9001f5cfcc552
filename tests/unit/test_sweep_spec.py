"""Sweep files: the shipped ones load; every kind of mistake is one clear error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaling.paths import SWEEPS_DIR
from scaling.sweep.__main__ import main
from scaling.sweep.spec import SweepError, grid_size, load_sweep

TOY = {
    "name": "toy",
    "base": {"function": "scaling.sweep.toy:quadratic"},
    "search_space": {"x": {"type": "float", "low": -5, "high": 5}, "steps": 2},
    "objectives": [{"metric": "loss", "direction": "minimize"}],
    "n_trials": 3,
}

CLIP = {
    "base": {"kind": "clip", "rung": "B16", "overrides": ["train.samples=256"]},
    "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "objectives": [{"metric": "eval/synth_cls/top1", "direction": "maximize"}],
}


def write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["trv_ablation", "clip_lr_layer_decay", "patch_dropout"])
def test_shipped_sweeps_load(name: str) -> None:
    spec = load_sweep(SWEEPS_DIR / f"{name}.yaml")
    assert spec.name == name
    assert spec.objectives and spec.params


def test_trv_ablation_is_the_full_grid_over_a_mim_clip_pipeline() -> None:
    spec = load_sweep("trv_ablation")
    assert spec.sampler["name"] == "grid"
    assert {p.name for p in spec.params} == {
        "model.vision.norm", "model.vision.init", "model.vision.mlp", "model.vision.pos"}
    assert grid_size(spec.params) == 16 == spec.n_trials
    assert spec.base.stages == ["mim", "clip"] and spec.base.teacher.rung
    assert spec.objectives[0].key == "clip/eval/synth_cls/top1"


def test_cli_overrides_change_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, TOY)
    spec = load_sweep(path, ["n_trials=7", "workers=3", "search_space.x=[1, 2]", "sampler.seed=5"])
    assert (spec.n_trials, spec.workers, spec.sampler["seed"]) == (7, 3, 5)
    x = next(p for p in spec.params if p.name == "x")
    assert x.type == "categorical" and x.choices == (1, 2)


def test_unknown_search_space_key_names_it_and_close_matches(tmp_path: Path) -> None:
    data = {**CLIP, "search_space": {"optim.lrr": [1e-3, 2e-3]}}
    with pytest.raises(SweepError, match=r"optim\.lrr.*Did you mean: optim\.lr"):
        load_sweep(write(tmp_path, data))


def test_unknown_tower_field_lists_valid_ones(tmp_path: Path) -> None:
    data = {**CLIP, "search_space": {"model.vision.nrom": ["rmsnorm"]}}
    with pytest.raises(SweepError, match=r"model\.vision\.nrom.*model\.vision\.norm"):
        load_sweep(write(tmp_path, data))


def test_bad_tower_value_fails_before_any_trial(tmp_path: Path) -> None:
    data = {**CLIP, "search_space": {"model.vision.norm": ["layernorm", "batchnorm"]}}
    with pytest.raises(SweepError, match="batchnorm"):
        load_sweep(write(tmp_path, data))


def test_stage_prefixed_key_must_be_a_pipeline_stage(tmp_path: Path) -> None:
    data = {**CLIP, "search_space": {"mim.optim.lr": [1e-3]}}  # not a stage of [clip]
    with pytest.raises(SweepError, match=r"mim\.optim\.lr"):
        load_sweep(write(tmp_path, data))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "float", "low": 1.0, "high": 1.0}, "empty range"),
        ({"type": "int", "low": 5, "high": 2}, "empty range"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
        ({"type": "categorical", "choices": []}, "non-empty"),
        ({"type": "uniform", "low": 0, "high": 1}, "'type' must be one of"),
        ({"type": "float", "low": 0, "high": 1, "choices": [1]}, "unknown field"),
    ],
)
def test_bad_ranges(tmp_path: Path, entry: dict, message: str) -> None:
    data = {**TOY, "search_space": {"x": entry}}
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, data))


def test_objective_the_stage_never_logs(tmp_path: Path) -> None:
    data = {**CLIP, "objectives": [{"metric": "eval/synth_cls/top2", "direction": "maximize"}]}
    with pytest.raises(SweepError, match=r"never logs 'eval/synth_cls/top2'.*eval/synth_cls/top1"):
        load_sweep(write(tmp_path, data))


def test_sqlite_storage_refused_with_several_workers(tmp_path: Path) -> None:
    data = {**TOY, "workers": 2, "storage": f"sqlite:///{tmp_path}/s.db"}
    with pytest.raises(SweepError, match="SQLite"):
        load_sweep(write(tmp_path, data))
    assert load_sweep(write(tmp_path, {**data, "workers": 1})).workers == 1


def test_pruning_needs_a_single_objective(tmp_path: Path) -> None:
    data = {**TOY, "pruner": "median",
            "objectives": [{"metric": "loss", "direction": "minimize"}, {"metric": "cost", "direction": "minimize"}]}
    with pytest.raises(SweepError, match="single-objective"):
        load_sweep(write(tmp_path, data))


def test_grid_sampler_needs_categorical_parameters(tmp_path: Path) -> None:
    data = {**TOY, "sampler": {"name": "grid"}}
    with pytest.raises(SweepError, match="grid sampler needs categorical"):
        load_sweep(write(tmp_path, data))


def test_mim_pipeline_needs_a_teacher(tmp_path: Path) -> None:
    data = {**CLIP, "base": {"stages": ["mim", "clip"], "rung": "B16"}}
    with pytest.raises(SweepError, match="teacher"):
        load_sweep(write(tmp_path, data))


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"unknown config key 'n_trial'.*Did you mean: n_trials"):
        load_sweep(write(tmp_path, {**TOY, "n_trial": 3}))


def test_cli_exits_2_before_submitting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path, {**CLIP, "search_space": {"optim.lrr": [1e-3]}})
    assert main([str(bad)]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing created, nothing submitted
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_storage_that_cannot_be_opened_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**TOY, "storage": "sqlite:////nonexistent-dir/deeper/study.db"})
    assert main([str(path), "--executor", "debug"]) == 2
    assert "cannot open storage" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_function_reference_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**TOY, "base": {"function": "scaling.sweep.toy:nope"}})
    assert main([str(path), "--check"]) == 2
    assert "cannot be imported" in capsys.readouterr().err


def test_trial_configs_wire_the_pipeline(tmp_path: Path) -> None:
    from scaling.sweep.pipeline import teacher_dir, trial_configs, trial_costs

    spec = load_sweep("trv_ablation", [f"workdir={tmp_path}"])
    params = {"model.vision.norm": "rmsnorm", "model.vision.init": "xavier",
              "model.vision.mlp": "gelu", "model.vision.pos": "abs"}
    mim, clip = trial_configs(spec, params, tmp_path / "trials" / "00003")
    teacher = teacher_dir(spec)
    assert teacher.startswith(str(tmp_path / "teacher-"))
    assert mim.inputs.teacher == teacher and mim.stage.teacher_rung == "B16"
    assert clip.inputs.init_vision == mim.out_dir and clip.inputs.init_text == teacher
    assert mim.out_dir.endswith("00003/mim") and clip.out_dir.endswith("00003/clip")
    for cfg in (mim, clip):  # tower switches reach both stages, so MIM weights fit the CLIP
        assert {f"model.vision.{k}": v for k, v in cfg.model.vision.items()} == params
    assert clip.optim.lr == 2e-3 and mim.optim.lr != 2e-3  # stage_overrides apply to one stage
    costs = trial_costs([mim, clip])
    swiglu = trial_costs(trial_configs(spec, {**params, "model.vision.mlp": "swiglu"}, tmp_path / "x"))
    assert costs["cost/train_flops"] > 0 and swiglu["cost/train_flops"] != costs["cost/train_flops"]


def test_trial_costs_count_the_image_size_the_stage_builds(tmp_path: Path) -> None:
    from scaling.models.registry import configured_rung_of
    from scaling.sweep.pipeline import check_towers, trial_configs, trial_costs

    spec = load_sweep("trv_ablation", [f"workdir={tmp_path}"])
    params = {"model.vision.norm": "rmsnorm", "model.vision.init": "xavier",
              "model.vision.mlp": "gelu", "model.vision.pos": "abs"}
    mim, clip = trial_configs(spec, params, tmp_path / "a")
    base = trial_costs([mim, clip])
    for cfg in (mim, clip):
        cfg.data.image_size = 2 * configured_rung_of(cfg).vision.image_size
        assert check_towers(cfg) == configured_rung_of(cfg)  # the sweep's rung is the stage's
    assert trial_costs([mim, clip])["cost/train_flops"] > 3 * base["cost/train_flops"]  # 4x the patches


def test_stage_prefixed_key_targets_one_stage(tmp_path: Path) -> None:
    from scaling.sweep.pipeline import trial_configs

    spec = load_sweep("trv_ablation", [f"workdir={tmp_path}", "search_space.clip.optim.layer_decay=[0.7]"])
    mim, clip = trial_configs(spec, {"clip.optim.layer_decay": 0.7}, tmp_path / "t")
    assert clip.optim.layer_decay == 0.7 and mim.optim.layer_decay == 1.0


def test_status_of_a_study_never_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(write(tmp_path, TOY))]) == 2
    assert "no study 'toy'" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes"])
@pytest.mark.parametrize("pruner", ["median", "hyperband", "none"])
def test_every_sampler_and_pruner_builds(tmp_path: Path, sampler: str, pruner: str) -> None:
    import importlib.util

    import optuna

    from scaling.sweep.samplers import make_pruner, make_sampler

    data = {**TOY, "search_space": {"x": [1.0, 2.0]}, "sampler": {"name": sampler, "seed": 1}, "pruner": pruner}
    spec = load_sweep(write(tmp_path, data))
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        with pytest.raises(SweepError, match="pip install cmaes"):
            make_sampler(spec)
    else:
        assert isinstance(make_sampler(spec), optuna.samplers.BaseSampler)
    expected = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
                "none": optuna.pruners.NopPruner}[pruner]
    assert isinstance(make_pruner(spec), expected)


def test_objective_on_a_real_eval_set_is_named_after_its_folder(tmp_path: Path) -> None:
    real = ["data.train=/data/laion/{00000..00009}.tar", "eval.classification=/data/imagenet-val",
            "eval.retrieval=/data/coco-5k"]
    base = {**CLIP["base"], "overrides": [*CLIP["base"]["overrides"], *real]}
    objectives = [{"metric": "eval/imagenet-val/top1"}, {"metric": "eval/coco-5k/text_r5", "direction": "maximize"}]
    spec = load_sweep(write(tmp_path, {**CLIP, "base": base, "objectives": objectives, "pruner": "none"}))
    assert [o.key for o in spec.objectives] == ["eval/imagenet-val/top1", "eval/coco-5k/text_r5"]
    # the synthetic set is not evaluated any more: its metric is refused, the real ones listed
    data = {**CLIP, "base": base}
    with pytest.raises(SweepError, match=r"objectives\[0\]: the clip stage never logs 'eval/synth_cls/top1'"
                                         r".*Known: .*eval/imagenet-val/top1.*eval/coco-5k/image_r1"):
        load_sweep(write(tmp_path, data))


def test_objective_of_a_stage_lists_what_that_stage_logs(tmp_path: Path) -> None:
    data = {**CLIP, "base": {"stages": ["mim", "clip"], "rung": "B16", "teacher": {"rung": "B16"}},
            "objectives": [{"metric": "eval/mim/los", "stage": "mim", "direction": "minimize"}]}
    with pytest.raises(SweepError, match=r"the mim stage never logs 'eval/mim/los'\. Did you mean: eval/mim/loss,"
                                         r".* Known: train/loss"):
        load_sweep(write(tmp_path, data))
    data["objectives"] = [{"metric": "cost/flops"}]
    with pytest.raises(SweepError, match=r"the runner never logs 'cost/flops'.*Known: cost/train_flops, cost/params"):
        load_sweep(write(tmp_path, data))


@pytest.mark.parametrize(("change", "message"), [
    ({"n_trials": "many"}, r"s\.yaml: 'n_trials' has a bad value"),
    ({"base": {"kind": "clip", "rung": "B16", "overrids": []}},
     r"unknown config key 'base\.overrids'.*Did you mean: base\.overrides"),
    ({"base": {"kind": "clip", "teacher": {"rung": "B16", "chekpoint": "x"}}},
     r"unknown config key 'base\.teacher\.chekpoint'.*Did you mean: base\.teacher\.checkpoint"),
    ({"objectives": [{"metric": "eval/synth_cls/top1", "directon": "maximize"}]},
     r"s\.yaml: unknown config key 'directon' in 'objectives\[\]'\. Did you mean: direction"),
    ({"workers": 0}, "'workers' must be a positive integer"),
])
def test_bad_sweep_file_names_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, {**CLIP, **change}))


def test_bad_command_line_key_suggests(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"command line: unknown config key 'n_trial'.*Did you mean: n_trials"):
        load_sweep(write(tmp_path, TOY), ["n_trial=3"])
    with pytest.raises(SweepError, match="expected key=value"):
        load_sweep(write(tmp_path, TOY), ["n_trials"])


def test_report_columns_are_checked_like_objectives(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"report\[0\]: the clip stage never logs 'eval/synth_ret/image_r2'"):
        load_sweep(write(tmp_path, {**CLIP, "report": ["eval/synth_ret/image_r2"]}))
    with pytest.raises(SweepError, match=r"report\[0\]: stage 'mim' is not in the pipeline \['clip'\]"):
        load_sweep(write(tmp_path, {**CLIP, "report": ["mim:eval/mim/loss"]}))
    assert load_sweep(write(tmp_path, {**CLIP, "report": ["eval/synth_ret/image_r1"]})).report
