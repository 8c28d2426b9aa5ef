"""Teacher-logit dumps (``eval.vis.image --save-logits``): frame rules, sizes, dtypes, resume, the manifest and
its refusals, and the student-side reader (``data.logits``), on the tiny synthetic set (``ssp.md`` §6.4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import ConfigError
from data.catalog import CITYSCAPES, SYNTHETIC, UAVID
from data.frames import read_split
from data.image_dataset import FrameStream
from data.logits import MANIFEST_NAME, FrameRule, TeacherLogits, decode, encode, frame_bytes
from eval.vis import image as vis_image

K = SYNTHETIC.num_classes


def dump(run: Path, out: Path, *flags: str, split: str = "val", evaluation: bool = False) -> dict | None:
    """A logits dump of ``split`` into ``out`` (no pictures); with ``evaluation`` the metrics are computed too."""
    args = [
        str(run),
        "--save-logits",
        "--split",
        split,
        "--logits-out",
        str(out),
        "--num-workers",
        "0",
        *flags,
    ]
    if evaluation:
        args += ["--no-write-res", "--vc", "none"]
    else:
        args.append("--no-evaluation")
    return vis_image.main(args)


def written(out: Path, ext: str = "npy") -> dict[str, list[int]]:
    """Clip name -> sorted frame indices on disk (frame stems are the zero-padded clip indices)."""
    got: dict[str, list[int]] = {}
    for f in sorted(out.glob(f"*/*.{ext}")):
        got.setdefault(f.parent.name, []).append(int(f.stem))
    return got


def model_logits(run: Path, data: Path, split: str, clip_index: int, t: int) -> tuple[str, str, torch.Tensor]:
    """The run's logits [K,H,W] of frame ``t`` of clip ``clip_index`` at its input size (64x96)."""
    from models.runs import load_image_model

    model, _, _ = load_image_model(run)
    clip = read_split(data, split, SYNTHETIC)[clip_index]
    stream = FrameStream([clip], SYNTHETIC, (64, 96))
    item = stream[t]
    with torch.inference_mode():
        return clip.name, item["frame"], model.eval()(item["image"][None])[0]


def test_frame_rules_parse_keep_and_cover() -> None:
    assert FrameRule.parse("kd_pairs(4)") == FrameRule("kd_pairs", 4)
    assert (
        FrameRule.parse(" kd_samples( 3 ) ") == FrameRule("kd_samples", 3)
        and str(FrameRule("kd_samples", 3)) == "kd_samples(3)"
    )
    assert str(FrameRule.parse("all")) == "all"
    assert FrameRule.parse("kd_pairs(4)").indices(10) == [0, 1, 4, 5, 8, 9]
    assert FrameRule.parse("kd_samples(4)").indices(10) == [1, 5, 9]
    assert FrameRule.parse("kd_pairs(2)").indices(5) == [0, 1, 2, 3, 4]
    assert not FrameRule.parse("kd_samples(4)").keeps(0) and FrameRule.parse("kd_samples(4)").keeps(5)
    pairs4, samples4, samples2 = (
        FrameRule.parse(r) for r in ("kd_pairs(4)", "kd_samples(4)", "kd_samples(2)")
    )
    assert pairs4.covers(samples4) and not samples4.covers(pairs4)
    assert not pairs4.covers(samples2) and FrameRule.parse("all").covers(pairs4)
    assert FrameRule.parse("kd_pairs(2)").covers(FrameRule.parse("all"))  # k <= 2: every frame
    for bad in ("kd_pairs", "kd_pairs(0)", "every(2)", "kd_pairs(2"):
        with pytest.raises(ConfigError) as err:
            FrameRule.parse(bad)
        assert "\n" not in str(err.value) and f"'{bad}' is not a frame rule" in str(err.value)


def test_frame_stream_takes_a_rule_or_an_int(tiny_synthetic: Path) -> None:
    clips = read_split(tiny_synthetic, "val", SYNTHETIC)  # 2 clips of 5 frames
    by_rule = FrameStream(clips, SYNTHETIC, (64, 96), FrameRule.parse("kd_samples(4)"))
    assert [(r.clip, r.index) for r in by_rule.items] == [(0, 1), (1, 1)]
    by_int = FrameStream(clips, SYNTHETIC, (64, 96), 4)  # the --skip-frames rule, i mod 4 in {0, 1}
    assert [r.index for r in by_int.items] == [0, 1, 4, 0, 1, 4]
    assert by_int.drop_done(lambda clip, stem: clip == clips[0].name and stem == "000001") == 1
    assert [r.index for r in by_int.items] == [0, 4, 0, 1, 4]


def test_reference_command_dumps_every_frame_with_a_full_manifest(
    tiny_image_run: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--skip-frames", "2", split="train")  # the reference recipe: kd_pairs(2) = all
    clips = read_split(tiny_synthetic, "train", SYNTHETIC)
    assert written(out) == {c.name: list(range(len(c))) for c in clips} and len(clips) == 4
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert (
        m["frames_rule"] == "kd_pairs(2)"
        and m["split"] == "train"
        and m["classes"] == list(SYNTHETIC.class_names)
    )
    assert m["size"] == [64, 96] and m["logits_size"] == "student"  # synthetic: the teacher's own input size
    assert m["input_size"] == [64, 96] and m["num_classes"] == K and m["stride"] == 1 and m["tta"] == "none"
    assert (m["dtype"], m["format"], m["layout"]) == ("float16", "npy", "K x H x W")
    assert m["bytes_per_frame"] == frame_bytes(K, (64, 96), "float16") == 8 * 64 * 96 * 2
    assert m["frames_written"] == m["frames_on_disk"] == 16 and m["frames_skipped"] == 0 and m["complete"]
    assert m["bytes_on_disk"] == sum(f.stat().st_size for f in out.glob("*/*.npy"))
    assert m["checkpoint"] == str((tiny_image_run / "last.pth").resolve()) and m["epoch"] is not None
    assert m["resize_method"].startswith("bilinear") and "no softmax" in m["values"]
    printed = capsys.readouterr().out
    assert "8 x 64 x 96 float16" in printed and f"logits folder (data_cfg.logits_folder): {out}" in printed
    assert "16 frames written, skipped 0 frames already written" in printed
    assert not list(out.rglob("*.tmp"))  # no temporary file left behind


def test_kd_pairs_and_kd_samples_keep_exactly_their_frames(
    tiny_image_run: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    clips = read_split(tiny_synthetic, "val", SYNTHETIC)  # 5 frames each: kd_pairs(4) -> {0, 1, 4}
    dump(tiny_image_run, tmp_path / "pairs", "--logits-frames", "kd_pairs(4)")
    assert written(tmp_path / "pairs") == {
        c.name: [i for i in range(len(c)) if i % 4 in (0, 1)] for c in clips
    }
    assert written(tmp_path / "pairs")[clips[0].name] == [0, 1, 4]
    dump(tiny_image_run, tmp_path / "samples", "--logits-frames", "kd_samples(4)")
    assert written(tmp_path / "samples") == {c.name: [1] for c in clips}
    assert json.loads((tmp_path / "samples" / MANIFEST_NAME).read_text())["frames_rule"] == "kd_samples(4)"


def test_evaluation_counts_only_consecutive_pairs(tiny_image_run: Path, tmp_path: Path) -> None:
    """kd_pairs(4) on 5-frame clips infers {0, 1, 4}: one true pair (0, 1) per clip, not (1, 4)."""
    metrics = dump(tiny_image_run, tmp_path / "pairs", "--logits-frames", "kd_pairs(4)", evaluation=True)
    assert metrics["frames_rule"] == "kd_pairs(4)" and metrics["miou"]["frames"] == 6
    assert {e["tc_protocol"]["frames"]["n_pairs"] for e in metrics["tc"].values()} == {2}
    assert len(written(tmp_path / "pairs")[next(iter(written(tmp_path / "pairs")))]) == 3


def test_a_rerun_skips_what_is_written(
    tiny_image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "logits"
    dump(tiny_image_run, out)
    files = sorted(out.glob("*/*.npy"))
    assert len(files) == 10
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[0].unlink()  # one frame missing (an interrupted dump): only that one is written again
    capsys.readouterr()
    dump(tiny_image_run, out)
    printed = capsys.readouterr().out
    assert "skipped 9 frames already written; 1 to infer" in printed and "1 frames written" in printed
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files[1:]) and files[0].is_file()
    dump(tiny_image_run, out, evaluation=True)  # evaluated: inferred, but nothing rewritten
    printed = capsys.readouterr().out
    assert "0 frames written, skipped 10 frames already written" in printed
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files[1:])
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert (m["frames_written"], m["frames_skipped"], m["frames_on_disk"]) == (0, 10, 10)


def test_a_different_dump_into_the_same_folder_is_refused(tiny_image_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--logits-frames", "kd_samples(4)")
    before = (out / MANIFEST_NAME).read_text()
    with pytest.raises(ConfigError) as err:
        dump(tiny_image_run, out, "--logits-frames", "kd_samples(4)", "--logits-dtype", "float32")
    msg = str(err.value)
    assert "\n" not in msg and "dtype float16 in the existing dump, float32 in this one" in msg
    assert f"delete {out} or pass --logits-out DIR" in msg
    assert (out / MANIFEST_NAME).read_text() == before  # refused before anything was written
    with pytest.raises(ConfigError, match=r"size 64x96 in the existing dump, 64x112 in this one"):
        dump(tiny_image_run, out, "--logits-frames", "kd_samples(4)", "--logits-size", "64x112")
    other = (
        r"frames_rule kd_samples\(4\) in the existing dump, kd_samples\(3\)"  # neither rule covers the other
    )
    with pytest.raises(ConfigError, match=other):
        dump(tiny_image_run, out, "--logits-frames", "kd_samples(3)")
    dump(tiny_image_run, out, "--logits-frames", "kd_samples(4)")  # the same dump again is fine
    dump(tiny_image_run, out, "--logits-frames", "kd_pairs(4)")  # a wider rule extends the dump
    dump(tiny_image_run, out, "--logits-frames", "kd_samples(4)")  # a narrower rerun keeps the wider rule
    assert json.loads((out / MANIFEST_NAME).read_text())["frames_rule"] == "kd_pairs(4)"


def test_skip_frames_and_a_disagreeing_rule_are_one_error(tiny_image_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        dump(tiny_image_run, tmp_path / "x", "--skip-frames", "4", "--logits-frames", "kd_samples(4)")
    assert (
        "\n" not in str(err.value)
        and "--skip-frames 4" in str(err.value)
        and "kd_samples(4)" in str(err.value)
    )
    with pytest.raises(ConfigError, match="is not a frame rule"):
        dump(tiny_image_run, tmp_path / "x", "--logits-frames", "pairs(2)")
    assert not (tmp_path / "x").exists()
    dump(tiny_image_run, tmp_path / "y", "--skip-frames", "2", "--logits-frames", "all")  # the same frames
    assert sum(len(v) for v in written(tmp_path / "y").values()) == 10


def test_teacher_logits_reads_the_model_logits_back(
    tiny_image_run: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--logits-size", "eval")
    clip, stem, want = model_logits(tiny_image_run, tiny_synthetic, "val", 1, 3)
    teacher = TeacherLogits(out)
    teacher.check(
        classes=SYNTHETIC.class_names, size_hw=(64, 96), rule=FrameRule.parse("kd_pairs(2)"), split="val"
    )
    got = teacher.load(clip, stem)
    assert got.dtype == np.float16 and got.shape == (K, 64, 96)
    assert np.allclose(got.astype(np.float32), want.numpy(), rtol=1e-3, atol=1e-3)
    assert not np.array_equal(got, teacher.load(clip, f"{int(stem) - 1:06d}"))  # another frame, other values
    with pytest.raises(ConfigError, match="split 'val' in the dump, training needs 'train'"):
        teacher.check(
            classes=SYNTHETIC.class_names,
            size_hw=(64, 96),
            rule=FrameRule.parse("kd_pairs(2)"),
            split="train",
        )


def test_bfloat16_npz_round_trips(tiny_image_run: Path, tiny_synthetic: Path, tmp_path: Path) -> None:
    x = torch.randn(3, 4, 5) * 10
    assert np.array_equal(decode(encode(x, "bfloat16"), "bfloat16"), x.to(torch.bfloat16).float().numpy())
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--logits-size", "eval", "--logits-dtype", "bfloat16", "--logits-format", "npz")
    clip, stem, want = model_logits(tiny_image_run, tiny_synthetic, "val", 0, 2)
    with np.load(out / clip / f"{stem}.npz") as z:
        assert z.files == ["logits"] and z["logits"].dtype == np.uint16  # bfloat16 bits
    got = TeacherLogits(out).load(clip, stem)
    assert got.dtype == np.float32 and got.shape == (K, 64, 96)
    assert np.allclose(got, want.numpy(), rtol=2**-7, atol=1e-3)  # bfloat16: 8 significant bits
    assert json.loads((out / MANIFEST_NAME).read_text())["bytes_per_frame"] == K * 64 * 96 * 2


def test_an_explicit_size_is_stored_and_recorded(tiny_image_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--logits-size", "64x112", "--logits-frames", "kd_samples(4)")
    files = sorted(out.glob("*/*.npy"))
    assert len(files) == 2 and all(np.load(f).shape == (K, 64, 112) for f in files)
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert (
        m["size"] == [64, 112] and m["logits_size"] == "64x112" and m["bytes_per_frame"] == K * 64 * 112 * 2
    )
    assert TeacherLogits(out).size_hw == (64, 112)


def test_the_student_config_sets_the_size(tiny_image_run: Path, tmp_path: Path) -> None:
    student = tmp_path / "student.yaml"
    student.write_text("base: base_synthetic\ndata_cfg:\n  crop_size: [32, 48]\n")  # an image config by path
    out = tmp_path / "logits"
    dump(tiny_image_run, out, "--student", str(student), "--logits-frames", "kd_samples(4)")
    assert json.loads((out / MANIFEST_NAME).read_text())["size"] == [32, 48]
    assert np.load(next(out.glob("*/*.npy"))).shape == (K, 32, 48)
    args = argparse.Namespace(logits_size="student", student="ssp_synthetic")  # a video config by name
    assert vis_image.resolve_logits_size(args, SYNTHETIC)[0] == (128, 224)
    with pytest.raises(ConfigError, match="--student only sets --logits-size student"):
        vis_image.resolve_logits_size(
            argparse.Namespace(logits_size="eval", student="ssp_synthetic"), SYNTHETIC
        )


def test_no_student_size_falls_back_to_the_teacher_input(capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(logits_size="student", student=None)
    assert vis_image.resolve_logits_size(args, CITYSCAPES)[0] is None
    assert "keeping the teacher's input size" in capsys.readouterr().out
    assert vis_image.resolve_logits_size(args, SYNTHETIC)[0] is None
    assert vis_image.resolve_logits_size(args, UAVID)[0] == (736, 1280)
    with pytest.raises(ConfigError, match="expected 'eval', 'student', 'native' or HxW"):
        vis_image.resolve_logits_size(argparse.Namespace(logits_size="64by112", student=None), SYNTHETIC)
