"""The published-results files against their sources (one test per table) and the bubble chart.

The numbers below are what the papers' tables say (EVA-CLIP-18B paper Tables 1-3, EVA-02 paper
Tables 5 and 9-12, the EVA-CLIP paper's abstract), cross-checked with BAAI's EVA GitHub model
cards where those carry the same evaluation.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from scaling.analysis import published


def _row(df: pd.DataFrame, model: str) -> pd.Series:
    rows = df[df["model"] == model]
    assert len(rows) == 1, f"{model} must appear once"
    return rows.iloc[0]


def _check(row: pd.Series, expected: dict) -> None:
    for key, value in expected.items():
        got = row[key]
        if isinstance(value, float) and math.isnan(value):
            assert pd.isna(got), f"{row['model']}.{key} must stay empty (unverified), got {got}"
        elif isinstance(value, str):
            assert got == value, f"{row['model']}.{key}: {got!r} != {value!r}"
        else:
            assert float(got) == pytest.approx(value), f"{row['model']}.{key}: {got} != {value}"


NAN = float("nan")


def test_every_row_names_its_table_and_source_and_explains_gaps() -> None:
    for name in published.TABLES:
        df = published.table(name)
        assert df["table"].notna().all() and df["source"].notna().all(), name
        values = df.drop(columns=["table", "source", "note", "rung"], errors="ignore")
        for _, row in df[values.isna().any(axis=1)].iterrows():
            assert isinstance(row["note"], str) and "empty" in row["note"], (name, row["model"])


def test_eva_clip_18b_paper_tables_1_to_3() -> None:
    df = published.table("clip_models")
    _check(_row(df, "EVA-CLIP-18B"), dict(
        total_params_m=18100, image_params_m=17500, text_params_m=695, data="Merged-2B+", samples_seen_b=6,
        image_size=224, batch_size_k=108, gpus="360 A100-40GB", img_cls_avg27=80.7, video_cls_avg=75.0,
        retrieval_mr=87.8, in1k_zero_shot=83.8, coco_t2i_r5=78.5))  # fmt: skip
    _check(_row(df, "EVA-CLIP-8B"), dict(
        total_params_m=8100, image_params_m=7500, text_params_m=695, data="Merged-2B", samples_seen_b=9,
        batch_size_k=178, gpus="384 A100-40GB", img_cls_avg27=79.4, video_cls_avg=73.6, retrieval_mr=86.2,
        in1k_zero_shot=83.5, coco_t2i_r5=76.0))  # fmt: skip
    _check(_row(df, "EVA-02-CLIP-E/14+"), dict(
        total_params_m=5000, image_params_m=4400, text_params_m=695, data="LAION-2B", samples_seen_b=9,
        batch_size_k=144, gpus="144 A100-80GB", img_cls_avg27=78.7, video_cls_avg=72.1, retrieval_mr=85.7,
        coco_t2i_r5=75.9))  # fmt: skip
    _check(_row(df, "EVA-01-CLIP-g/14+"), dict(
        total_params_m=1300, image_params_m=1000, text_params_m=354, data="Merged-2B", samples_seen_b=11,
        batch_size_k=114, gpus="112 A100-40GB", img_cls_avg27=75.1, video_cls_avg=68.8, retrieval_mr=85.3,
        coco_t2i_r5=74.7))  # fmt: skip
    _check(_row(df, "EVA-01-CLIP-g/14"), dict(
        total_params_m=1100, text_params_m=124, data="LAION-400M", img_cls_avg27=72.2, video_cls_avg=66.2,
        retrieval_mr=80.9, coco_t2i_r5=69.1))  # fmt: skip


def test_eva_clip_18b_table1_peers() -> None:
    df = published.table("clip_models")
    expected = {  # model: (total, image, text params M, data, samples B, size, batch k, gpus,
        #         27-set, video, MR (Tab. 1), IN-1K (Tab. 2), COCO image retrieval R@5 (Tab. 3))
        "OpenCLIP-G/14": (2500, 1800, 695, "LAION-2B", 39, 224, 160, "512 A100-80GB", 76.2, 68.7, 85.7, 80.4, 76.1),
        "InternVL-C": (14000, 6000, 8000, "custom", 29, 224, 164, "640 A100-80GB", 78.0, 73.7, 86.6, 83.2, 77.1),
        "DFN5B-CLIP-H/14": (1000, 632, 354, "DFN-5B", 39, 224, 79, "TPUv4", 78.3, 67.0, 86.6, 83.5, 78.0),
        "DFN5B-CLIP-H/14-378": (1000, 632, 354, "DFN-5B", 5, 378, 79, "TPUv4", 79.2, 68.4, 87.2, 84.3, 79.2),
    }
    keys = ("total_params_m", "image_params_m", "text_params_m", "data", "samples_seen_b", "image_size",
            "batch_size_k", "gpus", "img_cls_avg27", "video_cls_avg", "retrieval_mr", "in1k_zero_shot",
            "coco_t2i_r5")  # fmt: skip
    for model, values in expected.items():
        row = _row(df, model)
        _check(row, dict(zip(keys, values, strict=True)))
        assert not row["family"].startswith("EVA") and "EVA-CLIP-18B Tab. 1" in row["table"]


def test_every_value_cites_the_table_it_comes_from() -> None:
    df = published.table("clip_models")
    for _, row in df.iterrows():
        if row["model"] == "EVA-02-CLIP-E/14":  # in no paper's table: the README, and it says so
            assert "README" in row["table"] and "README figures only" in row["note"]
            continue
        cited = row["table"]
        assert ("EVA-CLIP-18B Tab. 1" in cited) or ("EVA-02 Tab. 10" in cited), row["model"]
        if not pd.isna(row["coco_t2i_r5"]):
            assert "Tab. 3 (COCO" in cited or "Tab. 12 (COCO" in cited, row["model"]
        if not pd.isna(row["img_cls_avg27"]):
            assert "EVA-CLIP-18B Tab. 1" in cited or "Tab. 9 (27-set" in cited, row["model"]


def test_eva02_tables_9_to_12_clip() -> None:
    df = published.table("clip_models")
    expected = {  # model: (IN-1K zero-shot top-1, total params M, samples B, batch k, COCO T2I R@5)
        "EVA-01-CLIP-g/14": (78.5, 1100, 11, 41, 69.1),
        "EVA-01-CLIP-g/14+": (79.3, 1300, 11, 114, 74.7),
        "EVA-02-CLIP-B/16": (74.7, 149, 8, 131, 66.9),
        "EVA-02-CLIP-L/14": (79.8, 428, 4, 131, 71.2),
        "EVA-02-CLIP-L/14+": (80.4, 428, 6, 61, 71.7),
        "EVA-02-CLIP-E/14": (81.9, 4700, 4, 115, 74.7),
        "EVA-02-CLIP-E/14+": (82.0, 5000, 9, 144, 75.9),
    }
    for model, (top1, params, samples, batch, r5) in expected.items():
        _check(_row(df, model), dict(in1k_zero_shot=top1, total_params_m=params, samples_seen_b=samples,
                                     batch_size_k=batch, coco_t2i_r5=r5))  # fmt: skip
    # the 27-set (Tab. 9) and video (Tab. 11) averages of the EVA-02 paper
    _check(_row(df, "EVA-02-CLIP-B/16"), dict(img_cls_avg27=65.6, video_cls_avg=58.3, retrieval_mr=NAN))
    _check(_row(df, "EVA-02-CLIP-L/14+"), dict(img_cls_avg27=73.5, video_cls_avg=67.7, image_size=336))


def test_eva02_table5_sizes() -> None:
    df = published.table("eva02_sizes")
    expected = {"EVA-02-Ti": (192, 12, 3, 512, 6), "EVA-02-S": (384, 12, 6, 1024, 22),
                "EVA-02-B": (768, 12, 12, 2048, 86), "EVA-02-L": (1024, 24, 16, 2730, 304)}  # fmt: skip
    for model, (width, depth, heads, hidden, params) in expected.items():
        _check(_row(df, model), dict(patch_size=14, width=width, depth=depth, heads=heads, mlp_hidden=hidden,
                                     params_m=params, gflops=NAN))  # fmt: skip


def test_eva_clip_headlines() -> None:
    df = published.table("headlines")
    _check(_row(df, "EVA-02-CLIP-E/14+"), dict(metric="in1k_zero_shot", value=82.0, samples_seen_b=9))
    _check(_row(df, "EVA-02-CLIP-L/14+"), dict(metric="in1k_zero_shot", value=80.4, samples_seen_b=6))
    _check(_row(df, "EVA-CLIP-18B"), dict(metric="img_cls_avg27", value=80.7, samples_seen_b=6))
    # the headline numbers agree with the model table they summarise
    models = published.table("clip_models")
    assert _row(models, "EVA-02-CLIP-E/14+")["in1k_zero_shot"] == 82.0
    assert _row(models, "EVA-CLIP-18B")["img_cls_avg27"] == 80.7


def test_unknown_table_names_the_choices() -> None:
    with pytest.raises(published.UnknownTableError, match="clip_models"):
        published.table("table7")


def test_bubble_frame_sizes_follow_compute() -> None:
    df = published.bubble_frame("img_cls_avg27")
    eva = {"EVA-01-CLIP-g/14", "EVA-01-CLIP-g/14+", "EVA-02-CLIP-B/16", "EVA-02-CLIP-L/14+", "EVA-02-CLIP-E/14+",
           "EVA-CLIP-8B", "EVA-CLIP-18B"}  # fmt: skip
    peers = {"OpenCLIP-G/14", "DFN5B-CLIP-H/14", "DFN5B-CLIP-H/14-378", "InternVL-C"}
    assert set(df["model"]) == eva | peers
    assert set(df.loc[df["peer"], "model"]) == peers
    big = _row(df, "EVA-CLIP-18B")
    # EVA-CLIP-18B: bigger model per sample than 8B, fewer samples (6B vs 9B), more compute in total
    assert big["forward_gflops"] > _row(df, "EVA-CLIP-8B")["forward_gflops"]
    assert big["gflops_x_samples"] == pytest.approx(big["forward_gflops"] * 6e9)


def test_bubble_chart_from_published_data_alone(tmp_path) -> None:
    from scaling.analysis.plots.bubble import bubble_chart
    from scaling.analysis.plots.style import overlapping_labels, save

    fig = bubble_chart()  # no MLflow involved
    assert len(fig.axes) == 2
    texts = [[a.get_text() for a in panel] for panel in fig.labels]
    assert sorted(texts[0]) == sorted(published.bubble_frame("img_cls_avg27")["model"])
    assert sorted(texts[1]) == sorted(published.bubble_frame("in1k_zero_shot")["model"])
    assert {"OpenCLIP-G/14", "InternVL-C", "EVA-CLIP-18B"} <= set(texts[1])  # peers beside EVA
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()] if fig.axes[1].get_legend() else []
    families = [t.get_text() for a in fig.axes[1].artists for t in getattr(a, "get_texts", list)()]
    assert {"OpenCLIP", "DFN", "InternVL", "EVA-CLIP"} <= set(legend + families)
    for ax, artists in zip(fig.axes, fig.labels, strict=True):
        assert overlapping_labels(ax, artists) == []
        assert ax.get_xscale() == "log"
    paths = save(fig, tmp_path, "bubble")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 10_000 for p in paths)
