"""kitlib.preflight: a run's real step compiled for a TPU with libtpu's compile-only client: fits, bytes per chip, the batch search."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from kitlib import cli, preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MIB = 1024 ** 2

needs_libtpu = pytest.mark.skipif(
    not preflight.libtpu_installed() and not os.environ.get("KITLIB_REQUIRE_LIBTPU"),
    reason="compiling for a TPU needs libtpu: CI's kaggle-tpu leg (bash .ci/setup kaggle-tpu) runs these")

class _Device:
    pass

def _linear_compiles(fixed, per_image, calls):
    """A stand-in compiler whose peak bytes per chip grow linearly with the images per chip."""
    def compile_step(build, global_batch, devices, step="train"):
        calls.append(global_batch)
        per_chip = global_batch // len(devices)
        peak = fixed + per_image * per_chip
        return preflight.StepCost(global_batch, True, argument_bytes=fixed, temp_bytes=peak - fixed, flops=1e9 * per_chip)
    return compile_step

def test_the_batch_search_lands_within_15_percent_of_the_largest_fitting_batch(monkeypatch):
    target, devices, calls = preflight.TARGETS["tpu-v5e-8"], [_Device() for _ in range(8)], []
    per_image = 9 * MIB                                       # 16 GiB / 9 MiB ~ 1820 images per chip fit
    monkeypatch.setattr(preflight, "compile_step", _linear_compiles(200 * MIB, per_image, calls))
    first = preflight.compile_step(None, 65536, devices)
    batch, costs = preflight.largest_fitting_batch(None, 65536, devices, target, max_compiles=6, tried=[first])
    exact = (target.hbm_bytes - 200 * MIB) // per_image        # images per chip
    assert batch % 8 == 0 and exact * 8 * 0.85 <= batch <= exact * 8
    assert len(costs) <= 6 and all(c.global_batch_size % 8 == 0 for c in costs)

def test_the_batch_search_halves_through_refusals_without_numbers(monkeypatch):
    target, devices, calls = preflight.TARGETS["tpu-v5e-1"], [_Device()], []

    def refuses_above_100(build, global_batch, devices, step="train"):
        calls.append(global_batch)
        if global_batch > 100:
            return preflight.StepCost(global_batch, False, error="RESOURCE_EXHAUSTED: Ran out of memory")
        return preflight.StepCost(global_batch, True, temp_bytes=MIB)

    monkeypatch.setattr(preflight, "compile_step", refuses_above_100)
    batch, _ = preflight.largest_fitting_batch(None, 1024, devices, target, max_compiles=8)
    assert calls[:3] == [512, 256, 128] and 88 <= batch <= 100   # halving, then bisection

def test_no_batch_fits_when_one_image_per_chip_is_too_much(monkeypatch):
    target, devices = preflight.TARGETS["tpu-v5e-8"], [_Device() for _ in range(8)]
    monkeypatch.setattr(preflight, "compile_step", _linear_compiles(17 * 1024 * MIB, MIB, []))
    assert preflight.largest_fitting_batch(None, 64, devices, target)[0] is None

def test_required_bytes_read_from_the_compilers_refusal():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(71.64G) exceeds available HBM (15.75G).")
    assert preflight.required_bytes(message) == int(71.64 * 1024 ** 3)
    assert preflight.required_bytes("INTERNAL: something else") == 0

def test_the_pip_line_names_the_libtpu_of_the_installed_jax(monkeypatch):
    monkeypatch.setattr(preflight.importlib.metadata, "requires",
                        lambda name: ["numpy>=2", 'libtpu==0.0.42.*; extra == "tpu"', 'requests; extra == "tpu"'])
    assert preflight.libtpu_install_hint() == "pip install 'libtpu==0.0.42.*'"
    monkeypatch.undo()
    import jax

    known = {"0.7.2": "libtpu==0.0.23", "0.10.2": "libtpu==0.0.42.*",    # each stack's jax and its [tpu] pin
             "0.12.1": "libtpu==0.0.53.*"}
    assert preflight.libtpu_install_hint() == f"pip install '{known[jax.__version__]}'"

def test_without_libtpu_the_preflight_is_one_line_with_the_pip_line(monkeypatch, tmp_path, sample_dir, capsys):
    monkeypatch.setattr(preflight, "libtpu_installed", lambda: False)
    code = cli.main(["pretrain", "--data", sample_dir, "--out", str(tmp_path / "o"), "--preflight", "tpu-v5e-8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("kitlib pretrain: error: --preflight compiles for a TPU") and "pip install 'libtpu" in err[0]
    assert not os.path.exists(tmp_path / "o")

def test_the_report_says_what_fits_and_what_to_pass():
    report = preflight.Report(
        command="pretrain", target="tpu-v5e-8", topology="v5e:2x4", devices=8, global_batch_size=4096, fits=False,
        compiled=False, bytes_per_device=dict.fromkeys(("arguments", "outputs", "temporaries", "aliased", "peak"), 0),
        hbm_bytes_per_device=16 * 1024 ** 3, flops_per_step=0.0, step_seconds_lower_bound=0.0, steps_per_epoch=5,
        epoch_seconds_lower_bound=0.0, compile_seconds=3.0, error="RESOURCE_EXHAUSTED: Ran out of memory on HBM",
        max_global_batch_size=1024,
        at_max_global_batch_size={"peak_bytes": 15 * 1024 ** 3, "flops_per_step": 2e12, "step_seconds_lower_bound": 0.01,
                                  "steps_per_epoch": 20, "epoch_seconds_lower_bound": 0.2},
        tried=[{"global_batch_size": 4096, "compile_seconds": 3.0}, {"global_batch_size": 1024, "compile_seconds": 40.0}])
    text = preflight.describe(report)
    assert "DOES NOT FIT" in text and "pass --batch-size 1024" in text and "15.00 GiB per chip" in text
    assert "at least 10 ms" in text and "2 compile(s), 43 s" in text

def _cli(*argv):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "kitlib", *argv], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)

@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_the_small_cnn_swav_step_compiles_for_a_v5e_8_and_only_the_report_is_written(tmp_path, sample_dir):
    out = tmp_path / "run"
    done = _cli("pretrain", "--data", sample_dir, "--out", str(out), "--preflight", "tpu-v5e-8", "--verbose", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(out) == ["preflight.json"]             # nothing trained, no config, no checkpoint
    report = json.loads((out / "preflight.json").read_text())
    assert report["devices"] == 8 and report["target"] == "tpu-v5e-8" and report["fits"] and report["compiled"]
    assert 0 < report["bytes_per_device"]["peak"] < report["hbm_bytes_per_device"] == 16 * 1024 ** 3
    assert report["flops_per_step"] > 0 and report["global_batch_size"] == 64
    assert "FITS" in done.stdout and "nothing was run" in done.stdout

@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_bytes_per_chip_grow_with_the_batch(sample_dir):
    from kitlib import runtime
    from kitlib.models import backbones
    from kitlib.swav.model import SwAVModel

    def build(batch):
        import jax

        with runtime.policy_scope("mixed_bfloat16"):
            model = SwAVModel(backbones.build("small_cnn"), num_prototypes=20, hidden_dim=64, output_dim=16,
                              freeze_prototypes_niters=1)
            model.compile(optimizer="adam")
        return model, (tuple(jax.ShapeDtypeStruct((batch, s, s, 3), "float32") for s in (32, 32, 16, 16)),)

    devices = preflight.target_devices("tpu-v5e-8")
    small, large = (preflight.compile_step(build, b, devices) for b in (64, 512))
    assert small.compiled and large.compiled, (small.error, large.error)
    crop_bytes = (2 * 32 * 32 + 2 * 16 * 16) * 3 * 4                  # one image's four float32 crops
    assert large.peak_bytes - small.peak_bytes >= (512 - 64) // 8 * crop_bytes  # at least the extra inputs
    assert large.flops > 6 * small.flops                                        # 8x the images per chip

@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_an_impossible_batch_exits_4_naming_a_batch_that_fits(tmp_path, sample_dir):
    data = tmp_path / "big"                 # 25 real records in a shard named for 2,000,000 (the count is the name's)
    (data / "train_tfrecords").mkdir(parents=True)
    shutil.copy(os.path.join(sample_dir, "train_tfrecords", "ld_train00-25.tfrec"),
                data / "train_tfrecords" / "ld_train00-2000000.tfrec")
    shutil.copy(os.path.join(sample_dir, "label_num_to_disease_map.json"), data)
    out = tmp_path / "run"
    done = _cli("pretrain", "--data", str(data), "--out", str(out), "--preflight", "tpu-v5e-8", "--verbose", "0",
                "--backbone", "small_cnn", "--crops", "2x64@0.3-1,4x32@0.1-0.3", "--prototypes", "50",
                "--queue-length", "0", "--batch-size", str(2 ** 20))
    assert done.returncode == preflight.EXIT_DOES_NOT_FIT, done.stderr[-3000:]
    report = json.loads((out / "preflight.json").read_text())
    best = report["max_global_batch_size"]
    assert not report["fits"] and best and best % 8 == 0 and best < 2 ** 20
    assert any(t["global_batch_size"] == best and t["fits"] for t in report["tried"])
    assert f"pass --batch-size {best}" in done.stdout

@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_a_tiny_bit_fine_tuning_step_compiles_for_a_v5e_8(tmp_path, sample_dir):
    from kitlib.models import standin

    backbone = standin.make_tiny_backbone(str(tmp_path / "tiny.keras"), "bit_tiny")
    out = tmp_path / "run"
    done = _cli("finetune", "--data", sample_dir, "--backbone", backbone, "--out", str(out), "--preflight",
                "tpu-v5e-8", "--batch-size", "64", "--resolution", "160", "128")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "preflight.json").read_text())
    assert report["command"] == "finetune" and report["devices"] == 8 and report["fits"]
    assert report["period"] == "run" and report["steps_per_epoch"] > 0 and report["flops_per_step"] > 0
    assert os.listdir(out) == ["preflight.json"]

@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_the_prediction_pass_compiles_for_a_v5e_8_and_writes_no_submission(tmp_path, sample_dir):
    from kitlib.bit import export

    model = export.make_stand_in_classifier(str(tmp_path / "model"), image_size=32)
    out = tmp_path / "sub" / "submission.csv"
    done = _cli("predict", "--data", sample_dir, "--model", model, "--out", str(out), "--preflight", "tpu-v5e-8",
                "--tta", "flip", "--batch-size", "12")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "sub" / "preflight.json").read_text())
    assert not out.exists() and report["command"] == "predict" and report["fits"]
    assert report["global_batch_size"] == 16 and report["steps_per_epoch"] == 1 * 3  # 15 images, 3 views
    assert "test_images=15, views=3" in done.stdout
