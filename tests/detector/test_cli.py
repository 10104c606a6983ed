import json
import shutil
import subprocess
import sys

import pytest

from detector.cli import COMMANDS, main

# the default family (CRAD) at its smoke size, shorter still: these tests are about the commands
TINY = ["--profile", "smoke", "--epochs", "2", "--device", "cpu"]


def test_help_for_every_command(capsys):
    names = [c.name for c in COMMANDS]
    assert names == ["train", "eval", "predict", "calibrate", "benchmark"]
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"linewatch-detector {name}" in out and len(out) > 200
        if name == "train":  # the default family's own options are offered
            assert "default crad" in out and "--grid-lr" in out and "--epochs-ear" not in out


def test_plugin_commands_can_register(monkeypatch):
    import types

    from detector import cli

    mod = types.ModuleType("fake_serve")

    def register(sub):
        p = sub.add_parser("serve", help="serve")
        p.set_defaults(func=lambda args: 7)

    mod.register = register
    monkeypatch.setitem(sys.modules, "fake_serve", mod)
    monkeypatch.setattr(cli, "PLUGIN_MODULES", ("fake_serve", "detector.service_does_not_exist"))
    assert main(["serve"]) == 7


def test_missing_and_empty_dataset_errors(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "dataset not found" in err
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    rc = main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "no images in train/good" in err
    for i in range(2):
        (tmp_path / "empty" / "train" / "good" / f"{i}.png").write_bytes(b"garbage")
    rc = main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "0 readable training images" in err[-1] and err[-1].startswith("linewatch-detector: error:")
    assert "2 corrupt skipped" in err[-1] and "not a decodable image" in err[-1]  # (tqdm bars precede it)
    rc = main(["eval", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "checkpoint not found" in err


def test_train_skips_corrupt_images_and_eval_calibrate_predict(tmp_path, toy_dataset, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy_dataset, data)
    (data / "train/good/zz_garbage.png").write_bytes(b"not an image at all")
    good = (data / "train/good/000.png").read_bytes()
    (data / "train/good/zz_truncated.png").write_bytes(good[: len(good) // 2])
    (data / "test/good/zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    ckpt = tmp_path / "m.pt"
    rc = main(["train", "--data", str(data), "--out", str(ckpt), "--json", str(tmp_path / "train.json"), *TINY])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "zz_garbage.png" in cap.err and "zz_truncated.png" in cap.err and "zz_bad.jpg" in cap.err
    summary = json.loads((tmp_path / "train.json").read_text())
    assert len(summary["skipped_images"]) == 3 and "image_auroc" in summary["metrics"]
    assert summary["family"] == "crad"  # the default family

    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(tmp_path / "eval.json")])
    assert rc == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert {"image_auroc", "pixel_auroc", "aupro_0.3", "image_f1_max"} <= set(ev["metrics"])

    rc = main(["calibrate", "--checkpoint", str(ckpt), "--images", str(data / "test/good"), "--target-far", "0.05",
               "--out", str(tmp_path / "cal.pt"), "--json", str(tmp_path / "cal.json")])
    assert rc == 0
    cap = capsys.readouterr()
    cal = json.loads((tmp_path / "cal.json").read_text())["calibration"]
    n_good = len(list((data / "test/good").glob("*.png")))
    assert cal["n_normal"] == n_good < 19  # fewer than 1/0.05 - 1: the rate cannot be promised, and it says so
    assert f"WARNING: Only {n_good} held-out normal images: too few for a 5% false-alarm rate" in cap.err
    assert "19 normal images would be enough" in cap.err and cal["warning"] in cap.err
    rc = main(["predict", "--checkpoint", str(tmp_path / "cal.pt"), str(data / "test/spot"),
               "--heatmaps", str(tmp_path / "hm")])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 10
    assert len(list((tmp_path / "hm").glob("*.png"))) == 10


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "detector.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "calibrate" in r.stdout
