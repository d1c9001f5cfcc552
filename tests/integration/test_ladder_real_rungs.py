"""The real rungs end to end on the CPU: ``--from B16 --to L14 --no-proxy --executor local``.

mim@L14 (EVA-02-L, 224 px, patch 14) regresses a real-size EVA02-B-16 CLIP teacher saved from
open_clip (random init, nothing downloaded); clip@L14 (EVA02-CLIP-L/14, 77-token text) starts
from it. Both train two steps of micro-batch 1 on 224 px JPEG shards in img2dataset layout,
log to MLflow and checkpoint; the final CLIP loads into open_clip's ``EVA02-L-14`` with equal
embeddings. Prints the wall time and the largest resident memory of a job.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CPU_STAGE = [  # the real recipes, on one CPU process, a handful of samples
    "train.samples=2", "train.batch_size=1", "train.micro_batch=1", "train.precision=fp32",
    "train.log_every=1", "train.ckpt_every=0", "distributed.deepspeed=false", "distributed.zero_stage=0",
    "resources.nodes=1", "resources.gpus_per_node=0", "resources.tasks_per_node=1",
    "resources.cpus_per_task=2", "resources.timeout_min=30", "optim.warmup_samples=0",
    "eval.every_samples=0", "eval.max_samples=4", "eval.batch_size=4", "data.shuffle_buffer=8",
]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "MLFLOW_TRACKING_URI")}
    # the jobs use both cores (resources.cpus_per_task=2)
    return env | {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp),
                  "OMP_NUM_THREADS": "2"}


def test_b16_to_l14_real_size_on_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from scaling import tracking
    from scaling.models.registry import get_rung
    from scaling.train.checkpoint import load_model_state

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "scaling.data.synth", "--out", str(data), "--samples", "16",
                    "--image-size", "224", "--format", "jpg", "--shard-size", "8", "--eval",
                    "--samples-per-class", "1"], check=True, env=_env(tmp_path), cwd=tmp_path, timeout=600)
    shards = sorted(data.glob("*.tar"))
    assert len(shards) == 2
    names = subprocess.run(["tar", "tf", str(shards[0])], capture_output=True, text=True, check=True).stdout
    assert ".jpg" in names and ".txt" in names and ".json" in names  # img2dataset layout
    pattern = str(data / "train-{000000..000001}.tar")

    torch.manual_seed(0)
    teacher = open_clip.create_model("EVA02-B-16", pretrained=None)  # real size, random init
    teacher_file = tmp_path / "eva02_b16_clip.pt"
    torch.save(teacher.state_dict(), teacher_file)
    del teacher

    args = [sys.executable, "-m", "scaling.ladder", "--from", "B16", "--to", "L14", "--no-proxy",
            "--executor", "local", f"ladder.teacher_checkpoint={teacher_file}", f"data.train={pattern}",
            f"eval.classification={data / 'eval' / 'classification'}", *CPU_STAGE]
    start = time.monotonic()
    run = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\nreal-size B16 -> L14 on CPU: wall {wall:.0f} s, largest job resident memory {peak_gb:.1f} GiB")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for stage in ("mim@L14", "clip@L14"):
        assert f"[{stage}] finished" in run.stdout, run.stdout[-3000:]

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = {r.info.run_name: r for r in tracking.find_runs(uri, "ladder-eva")}
    for stage in ("mim@L14", "clip@L14"):
        assert runs[stage].info.status == "FINISHED"
        assert runs[stage].data.params.get("stage.proxy") in ("False", "false")
        assert "train/loss" in runs[stage].data.metrics

    clip_dir = next((tmp_path / "runs" / "ladder-eva").glob("clip@L14-*"))
    state = load_model_state(clip_dir)
    reference = open_clip.create_model("EVA02-L-14", pretrained=None)
    reference.load_state_dict(state, strict=True)  # the toolkit's CLIP is open_clip's, as saved
    reference.eval()
    from scaling.models.build import build_clip
    from scaling.models.interop import load_clip_state_dict

    ours = build_clip(get_rung("L14"), device="meta")
    load_clip_state_dict(ours, state)
    ours.eval()
    images = torch.randn(1, 3, 224, 224)
    tokens = open_clip.get_tokenizer("EVA02-L-14")(["a red square"])
    assert tokens.shape[-1] == 77
    with torch.no_grad():
        assert torch.allclose(reference.encode_image(images, normalize=True), ours.encode_image(images), atol=1e-5)
        assert torch.allclose(reference.encode_text(tokens, normalize=True), ours.encode_text(tokens), atol=1e-5)
