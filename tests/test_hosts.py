"""kitlib.hosts: joining a multi-process run, input shares, one writer, agreement, failure.

The multi-process tests run the CLI as users launch it on a pod slice: two local processes of one run
(``--coordinator 127.0.0.1:PORT``, gloo collectives), four simulated CPU devices each, against one process
with eight."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kitlib import checkpoint, command, hosts, runtime
from kitlib.swav import pretrain
from tests.conftest import REPO, finish_processes, start_processes, xla_flags

# ============ one process: what the environment and the flags ask for ============


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"ISTPUVM": "1", "TPU_PROCESS_ADDRESSES": "local"}, None),          # a Kaggle v5e-8: one host
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}, None),                          # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, {}),                    # a pod slice: JAX detects it
    ({"SLURM_NTASKS": "4"}, {}), ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "10.0.0.2:8476", "num_processes": 2, "process_id": 1}),
])
def test_the_environment_says_when_a_run_has_several_processes(environ, expected):
    assert hosts.cluster_from_env(environ) == expected


def test_the_flags_come_as_three_or_not_at_all():
    assert hosts.cluster_from_flags() is None
    assert hosts.cluster_from_flags("127.0.0.1:1234", 2, 1) == dict(coordinator_address="127.0.0.1:1234",
                                                                    num_processes=2, process_id=1)
    with pytest.raises(ValueError, match="--coordinator HOST:PORT, --num-processes N and --process-id I"):
        hosts.cluster_from_flags("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        hosts.cluster_from_flags("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="0..1"):
        hosts.cluster_from_flags("127.0.0.1:1234", 2, 2)


def test_on_one_process_everything_is_a_no_op():
    assert hosts.join(environ={}) is False
    assert (hosts.process_index(), hosts.process_count(), hosts.is_writer()) == (0, 1, True)
    hosts.barrier("nothing to wait for")
    hosts.agree({"anything": 1}, "a record")
    assert hosts.shared_seed(1234) == 1234


def test_the_writer_saves_into_the_folder_and_any_other_process_into_its_own_deleted_after(tmp_path, monkeypatch):
    with hosts.writer_folder(str(tmp_path / "out")) as folder:
        assert folder == str(tmp_path / "out")
    monkeypatch.setattr(hosts, "process_index", lambda: 1)
    monkeypatch.setattr(hosts, "is_writer", lambda: False)
    with hosts.writer_folder(str(tmp_path / "out")) as folder:
        assert folder != str(tmp_path / "out") and os.path.isdir(folder) and "process1" in folder
        open(os.path.join(folder, "classifier.keras"), "w").close()
    assert not os.path.exists(folder) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_input_shares_read_disjoint_shards_that_cover_the_data(count):
    files = [f"/d/train_tfrecords/ld{i:02d}-25.tfrec" for i in range(7)]
    shares = [hosts.share_of(files, i, count) for i in range(count)]
    assert sorted(f for share in shares for f in share) == files
    assert all(share for share in shares) and sum(map(len, shares)) == len(files)


def test_fewer_shards_than_shares_is_one_line_naming_the_folder():
    with pytest.raises(ValueError, match=r"/d/train_tfrecords: 2 TFRecord shard\(s\) for 4 input shares"):
        hosts.share_of(["/d/train_tfrecords/a.tfrec", "/d/train_tfrecords/b.tfrec"], 0, 4)


def test_the_digest_ignores_key_order_and_sees_every_value():
    assert hosts.digest({"a": 1, "b": [1, 2]}) == hosts.digest({"b": [1, 2], "a": 1})
    assert hosts.digest({"a": 1, "b": [1, 2]}) != hosts.digest({"a": 1, "b": [2, 1]})


def test_a_command_built_for_one_process_refuses_a_multi_process_launch(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class OneProcess:
        verbose: int = 0

    @dataclasses.dataclass(frozen=True)
    class Several(command.MultiProcess):
        verbose: int = 0

    two = runtime.Runtime("CPU", (), None, "float32", process_index=1, process_count=2, local_devices=())
    monkeypatch.setattr(runtime, "setup", lambda **kwargs: two)
    with pytest.raises(ValueError, match="OneProcess runs in one process, but this is process 1 of 2"):
        command.runtime_for(OneProcess())
    assert command.runtime_for(Several()) is two


def test_the_plan_gives_one_input_share_per_process_and_refuses_what_cannot_split():
    config = pretrain.PretrainConfig(data_dir="d", out_dir="o", seed=0, global_batch_size=32)
    settings, reasons, _ = pretrain.resolve(config, 400, num_devices=8, image_hw=(64, 64), processes=2)
    assert settings.input_shares == 2 and reasons["input_shares"] == "one per process"
    settings, reasons, _ = pretrain.resolve(dataclasses.replace(config, input_shares=4), 400, 8, processes=2)
    assert settings.input_shares == 4 and "input_shares" not in reasons
    with pytest.raises(ValueError, match="multiple of the 2 process"):
        pretrain.resolve(dataclasses.replace(config, input_shares=3), 400, 8, processes=2)
    with pytest.raises(ValueError, match="knn_every runs on one process"):
        pretrain.resolve(dataclasses.replace(config, knn_every=1), 400, 8, processes=2)


def test_a_process_owning_one_share_gets_its_rows_of_the_global_batch(sample_dir):
    from kitlib.data import tfrecords
    from kitlib.swav import multicrop

    files = tfrecords.list_tfrecords(sample_dir)
    args = dict(crops="2x32@0.3-1,1x16@0.1-0.3", global_batch=8, seed=3)
    whole = next(iter(multicrop.training_batches(files, **args, shares=2)))[0]
    second = next(iter(multicrop.training_batches(files, **args, shares=2, owned=[1])))[0]
    assert [tuple(v.shape) for v in whole] == [(8, 32, 32, 3), (8, 32, 32, 3), (8, 16, 16, 3)]
    for view_whole, view_second in zip(whole, second):
        np.testing.assert_allclose(view_second.numpy(), view_whole.numpy()[4:], atol=1e-6)


@pytest.mark.slow
def test_a_process_that_is_not_the_writer_writes_nothing(tmp_path, sample_dir, monkeypatch):
    monkeypatch.setattr(hosts, "is_writer", lambda: False)
    out = tmp_path / "run"
    config = pretrain.PretrainConfig.smoke(data_dir=sample_dir, out_dir=str(out), epochs=1, max_steps_per_epoch=1,
                                           verbose=0)
    result = pretrain.run(pretrain.plan(config))
    assert len(result.history) == 0  # it reads the writer's history.csv, which no writer wrote here
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


# ============ several processes (the CLI, 2 x 4 simulated devices against 1 x 8) ============

_RUN = ["pretrain", "--smoke", "--epochs", "3", "--seed", "0", "--verbose", "2"]


def _one_process(args, devices=8):
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=xla_flags(devices))
    done = subprocess.run([sys.executable, "-m", "kitlib", *args], capture_output=True, text=True, env=environ,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kit_lines(out):
    """stdout lines that are not gloo's own ("[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of
    connected peer ranks is : 1", jax 0.10; its threads' lines can come cut in two)."""
    gloo = "[Gloo] Rank 0 is connected to 0 peer ranks. Expected number of connected peer ranks is : 0"

    def glooish(line):
        shape = re.sub(r"\d+", "0", line.strip())
        return "Gloo" in line or "peer ranks" in line or shape in gloo

    return [line for line in out.splitlines() if line.strip() and not glooish(line)]


def _two_processes(args, out, env=None):
    """Run `args` as 2 processes into `out`, both succeeding; returns (results, out). Run once: the misses
    once put down to gloo's wrong reduce-scatter sums (jax-ml/jax#40830, which needs 4 MiB chunks: these
    models' gradients are a few KiB) were the fine-tuning input's order following thread timing (Keras's two
    iterators shared one reshuffle generator; `kitlib.bit.inputs.train_dataset` now makes it per iterator)."""
    results = finish_processes(start_processes([*args, "--out", str(out)], env=env))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return results, out


def _weights(path):
    from kitlib.models import backbones

    return [np.asarray(w) for w in backbones.load(str(path)).get_weights()]


@pytest.mark.slow
@pytest.mark.matrix
def test_two_processes_train_to_the_same_history_as_one_process_on_eight_devices(tmp_path, sample_dir):
    single, multi = tmp_path / "one", tmp_path / "two"
    _one_process([*_RUN, "--data", sample_dir, "--out", str(single), "--input-shares", "2"])
    results, multi = _two_processes([*_RUN, "--data", sample_dir], multi)
    (_, out0, _), (_, out1, _) = results
    assert "8 x CPU (cpu) over 2 processes (this is process 0, 4 local)" in out0 and "Epoch 3/3" in out0
    assert _kit_lines(out1) == []                   # process 0 prints for both (gloo's own lines aside)
    one, two = checkpoint.read_history(single / "history.csv"), checkpoint.read_history(multi / "history.csv")
    assert [r["epoch"] for r in two] == [1, 2, 3]
    for key in ("loss", "lr"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-4)
    # usage entropy counts each crop's argmax prototype: near-ties flip under another reduction order
    # (one process on 8 vs on 4 devices: 0.04 nats apart by epoch 3, loss within 1e-6)
    np.testing.assert_allclose([r["usage_entropy"] for r in two], [r["usage_entropy"] for r in one], atol=0.1)
    # 9 Adam steps: each moves a weight by up to ~lr (3e-3) whatever the gradient's size, so roundoff in a
    # near-zero gradient can move it steps the other way: 1e-4 typical, 1.6e-3 seen on the AVX2-capped leg,
    # 1.4e-2 on 4 of 128 weights on jax 0.10 with the pyramid features. So: every weight within the 2 x 9
    # steps two opposite runs could part by, nearly all within 5e-3; another seed (or other data) moves the
    # weights ~0.1, and the losses above are the sharp check
    for a, b in zip(_weights(multi / "backbone.keras"), _weights(single / "backbone.keras")):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * 9 * 3e-3)
        assert np.mean(np.abs(a - b) > 5e-3) <= 0.05, np.abs(a - b).max()
    record = json.loads((multi / "config.json").read_text())
    assert record["facts"]["devices"] == 8 and record["facts"]["processes"] == 2
    assert record["settings"]["input_shares"] == 2
    written = sorted(str(p.relative_to(multi)) for p in multi.rglob("*") if p.is_file())
    assert written == ["backbone.keras", "checkpoints/state.npz", "config.json", "history.csv"]  # once, no tmp


@pytest.mark.slow
@pytest.mark.matrix
def test_two_processes_finetune_and_predict_as_one_process_on_eight_devices(tmp_path, sample_dir):
    from kitlib.bit import export
    from kitlib.models import standin

    backbone = standin.make_tiny_backbone(str(tmp_path / "backbone.keras"))
    tune = ["finetune", "--smoke", "--data", sample_dir, "--backbone", backbone, "--steps", "8", "--evaluations", "2",
            "--seed", "0", "--verbose", "2"]
    single, multi, scratch = tmp_path / "one", tmp_path / "two", tmp_path / "tmp"
    scratch.mkdir()
    _one_process([*tune, "--out", str(single)])
    results, multi = _two_processes(tune, multi, env={"TMPDIR": str(scratch)})
    assert "Epoch 2/2" in results[0][1] and _kit_lines(results[1][1]) == []
    one, two = (checkpoint.read_history(d / "history.csv") for d in (single, multi))
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-4)
    for key in ("accuracy", "val_accuracy"):  # counts of argmax hits: one flip on a near-tie is 1/64 or 1/25
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], atol=1 / 24)
    for a, b in zip(*(export.load_classifier(d).model.get_weights() for d in (single, multi))):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    record = json.loads((multi / "finetune.json").read_text())
    assert record["facts"]["processes"] == 2 and abs(record["val_accuracy"] - one[-1]["val_accuracy"]) < 1 / 24
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())  # written once
    assert list(scratch.iterdir()) == []                # process 1's checkpoints and export: its own, deleted

    predict = ["predict", "--data", sample_dir, "--model", str(multi)]
    _one_process([*predict, "--out", str(tmp_path / "p1" / "submission.csv")])
    results = finish_processes(start_processes([*predict, "--out", str(tmp_path / "p2" / "submission.csv")]))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert _kit_lines(results[1][1]) == []
    alone, shared = ((tmp_path / p / "submission.csv").read_text().splitlines() for p in ("p1", "p2"))
    assert [r.split(",")[0] for r in shared] == [r.split(",")[0] for r in alone]       # ids and order
    assert sum(a != b for a, b in zip(alone, shared)) <= 1                             # labels (a near-tie aside)
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["submission.config.json", "submission.csv"]


@pytest.mark.slow
def test_processes_that_planned_differently_refuse_to_run(tmp_path, sample_dir):
    started = start_processes([*_RUN, "--data", sample_dir, "--out", str(tmp_path / "run")],
                              extra={1: ["--temperature", "0.2"]})
    for rc, _, err in finish_processes(started):
        assert rc != 0 and "the pretrain plan of process(es) 1 differs from process 0's" in err, err[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_killed_process_ends_the_run_everywhere_and_a_rerun_resumes(tmp_path, sample_dir):
    out = tmp_path / "run"
    args = ["pretrain", "--smoke", "--epochs", "6", "--seed", "0", "--verbose", "0", "--data", sample_dir,
            "--out", str(out)]
    started = start_processes(args)
    history, deadline = out / "history.csv", time.time() + 300
    while len(checkpoint.read_history(history)) < 2 and time.time() < deadline:
        assert all(p.poll() is None for p in started), "a process ended before it was killed"
        time.sleep(0.2)
    started[1].send_signal(signal.SIGKILL)
    killed = time.time()
    results = finish_processes(started, timeout=120)
    assert time.time() - killed < 60                                    # no hang: heartbeats end the run
    assert all(rc != 0 for rc, _, _ in results)
    with np.load(out / "checkpoints" / "state.npz") as state:           # the last checkpoint is whole
        done = int(state["epochs_done"])
    assert 2 <= done < 6
    results = finish_processes(start_processes(args[:-4] + ["--verbose", "1", "--data", sample_dir,
                                                            "--out", str(out)]))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert f"resuming after epoch {done}" in results[0][1]
    assert [r["epoch"] for r in checkpoint.read_history(history)] == list(range(1, 7))
