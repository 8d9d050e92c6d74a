"""Do the paper's settings fit a Kaggle TPU v5e-8? The kit's preflight on the real steps, at Cassava scale.

Each case runs ``python -m kitlib pretrain|finetune --preflight tpu-v5e-8`` in its own process (as a user
would), on a data folder of Cassava's size (the sample's 25 records in a shard named for 21,397 images: the
kit counts images from the names, and the rule then picks the paper's recipe), and prints per case: fits,
peak GiB per chip, TFLOP per chip per step, the step-time bound, the compile time and the host's peak memory
(the TPU compiler's, on this machine). A case that runs past --timeout or is killed says so.

    .venv-kaggle-tpu/bin/python bench/preflight.py [--cases swav,bit,default] [--timeout 900]

Needs libtpu (the kaggle-tpu stack has it: ``bash .ci/setup kaggle-tpu``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASSAVA_TRAIN = 21_397
SWAV_BATCHES = (256, 512, 1024)
BIT_BATCHES = (64, 128, 256, 512)


def cassava_sized_data(root):
    """A competition-layout folder that counts as Cassava (21,397 images in 4 shards, so fine-tuning can hold
    one out) with the sample's records."""
    sample = os.path.join(REPO, "data", "sample")
    os.makedirs(os.path.join(root, "train_tfrecords"), exist_ok=True)
    counts = [CASSAVA_TRAIN // 4 + (i < CASSAVA_TRAIN % 4) for i in range(4)]
    for i, count in enumerate(counts):
        shutil.copy(os.path.join(sample, "train_tfrecords", f"ld_train0{i}-25.tfrec"),
                    os.path.join(root, "train_tfrecords", f"ld_train0{i}-{count}.tfrec"))
    for name in ("label_num_to_disease_map.json", "train.csv"):
        shutil.copy(os.path.join(sample, name), root)
    return root


def random_bit_r50x1(path):
    """BiT-M-R50x1's architecture with random weights (the official .npz is a download; memory and FLOPs do
    not depend on the values)."""
    code = ("import sys; from kitlib.models import backbones, resnetv2; "
            "backbones.save(resnetv2.build('BiT-M-R50x1'), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, path], check=True, cwd=REPO, capture_output=True)
    return path


def _rss_gib(pid):
    """Resident memory of a process in GiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib / 1024 ** 2
    except (OSError, StopIteration):
        return 0.0


def run_case(argv, out, timeout, memory_limit_gib):
    """One preflight in a child process, stopped past `timeout` s or `memory_limit_gib` of host memory
    (the 2-core, 24 GiB box would otherwise start swapping or lose the process to the OOM killer).

    Returns:
        (report dict or None, wall seconds, host peak GiB, note).
    """
    start, peak = time.perf_counter(), 0.0
    log = tempfile.TemporaryFile(mode="w+")
    child = subprocess.Popen([sys.executable, "-m", "kitlib", *argv, "--out", out], cwd=REPO, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    note = ""
    while child.poll() is None:
        peak = max(peak, _rss_gib(child.pid))
        if peak > memory_limit_gib or time.perf_counter() - start > timeout:
            note = (f"stopped at {peak:.1f} GiB host memory" if peak > memory_limit_gib
                    else f"stopped past {timeout:.0f} s")
            child.kill()
            child.wait()
            break
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    path = os.path.join(out, "preflight.json")
    if note or not os.path.exists(path):
        log.seek(0)
        tail = ([line for line in log.read().splitlines() if line.strip()] or ["?"])[-1][:120]
        return None, seconds, peak, note or f"no report (rc {child.returncode}): {tail}"
    with open(path) as f:
        return json.load(f), seconds, peak, ""


def row(name, batch, report, seconds, peak, note):
    if report is None:
        return f"| {name} | {batch} | - | - | - | - | {seconds:.0f} | {peak:.1f} | {note} |"
    b = report["bytes_per_device"]
    fits = "yes" if report["fits"] else f"no (largest found: {report.get('max_global_batch_size')})"
    gib = f"{b['peak'] / 1024 ** 3:.2f}" if report["compiled"] else "refused"
    return (f"| {name} | {report['global_batch_size']} | {fits} | {gib} | {report['flops_per_step'] / 1e12:.3f} | "
            f"{report['step_seconds_lower_bound'] * 1e3:.1f} | {seconds:.0f} | {peak:.1f} | {note or report['error'][:80]} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="default,swav,bit", help="default (the rule's batch), swav, bit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    parser.add_argument("--memory-limit", type=float, default=20, help="host GiB per case before it is stopped")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    work = tempfile.mkdtemp(prefix="kitlib-preflight-bench-")
    data = cassava_sized_data(os.path.join(work, "cassava"))
    print(f"| case | global batch | fits on a v5e-8 | peak GiB / chip | TFLOP / chip / step | step >= ms | "
          f"wall s | host GiB | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    runs = []
    if "default" in cases:
        runs.append(("SwAV, the rule's settings and batch", None, ["pretrain", "--data", data, "--preflight",
                                                                   "tpu-v5e-8", "--verbose", "0"]))
    if "swav" in cases:
        runs += [(f"SwAV R50 2x224+6x96 K 3000 queue", b, ["pretrain", "--data", data, "--preflight", "tpu-v5e-8",
                                                          "--batch-size", str(b), "--verbose", "0"])
                 for b in SWAV_BATCHES]
    if "bit" in cases:
        backbone = random_bit_r50x1(os.path.join(work, "r50x1.keras"))
        runs += [(f"BiT R50x1 fine-tuning, HyperRule 480 px", b, ["finetune", "--data", data, "--backbone", backbone,
                                                                 "--preflight", "tpu-v5e-8", "--batch-size", str(b)])
                 for b in BIT_BATCHES]
    for i, (name, batch, cmd) in enumerate(runs):
        report, seconds, peak, note = run_case(cmd, os.path.join(work, f"out{i}"), args.timeout, args.memory_limit)
        print(row(name, batch or "rule", report, seconds, peak, note), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
