"""``python -m kitlib kaggle ...``: the Kaggle round trip from one terminal, on the ``kaggle`` package's API.

    download     the competition's files (Cassava by default), unpacked, and the layout checked (`kitlib.data.layout`)
    publish-kit  ``kitlib/`` (+ pyproject.toml, README.md) as the dataset ``<you>/kitlib``, created or versioned;
                 attached to a notebook it is ``/kaggle/input/kitlib``, where every notebook's first cell looks
    push         a notebook of ``notebooks/`` as a Kaggle kernel on a TPU v5e-8, a T4 GPU or a CPU, with a clean
                 ``kernel-metadata.json`` (``--dry-run --out DIR`` only writes the folder: no credentials needed)
    status       a kernel run's state (``--wait``: poll until it ends)
    output       a kernel run's output files (``backbone.keras``, ``bit_classifier/``) into ``--out``

This module parses the arguments and runs the commands; `kitlib.kaggle.api` holds the credentials, the API
object and the one-line explanation of every API failure, `kitlib.kaggle.kernels` what is uploaded (kernel
folders, the kit as a dataset) and the all-or-nothing folders.

``import kaggle`` is absolute, so it finds the ``kaggle`` package and not ``kitlib.kaggle``, unless ``kitlib/``
itself is on ``sys.path`` (a ``kitlib/*.py`` file run as a script puts its folder first): the kit runs as
``python -m kitlib``.

The ``kaggle`` package authenticates when it is imported, so it is imported only by
`kitlib.kaggle.api.authenticated_api`. Every command takes ``get_api``, a function returning the authenticated
API object, so tests pass a stand-in.

Errors are one line with the fix (exit code 2); whatever a command writes is built in a temporary folder and
moved into place only when complete.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile

from kitlib import __version__, checks
from kitlib.data.layout import check_layout, describe_layout
from kitlib.kaggle.api import (KAGGLE_URL, KaggleCommandError,
                               authenticated_api, call_api, explain_api_error,
                               find_credentials, http_status, redact,
                               response_error)
from kitlib.kaggle.kernels import (DATASET_METADATA, KERNEL_METADATA, RESUME_KNOB,
                                   KIT_DATASET_SLUG, check_ref,
                                   dataset_metadata, defaults_for,
                                   kernel_metadata, kernel_slug, machine_shape,
                                   move_into_place, notebook_config_fields,
                                   parse_switch, require_free,
                                   resolve_notebook, stage_kit, temp_beside,
                                   write_kernel_folder)
from kitlib.locations import COMPETITION, KAGGLE_INPUT, repo_root

DEFAULT_DATA = "data/cassava"  # where `kaggle download` unpacks the competition

OWNER_PLACEHOLDER = "YOUR-KAGGLE-USERNAME"  # the kernel id's owner in a --dry-run without credentials
TERMINAL_STATES = ("complete", "error", "cancel_requested", "cancel_acknowledged")


# ============ waiting ============


def status_name(response):
    """A kernel status response's state as lower-case text ("running", "complete", "error", ...)."""
    status = getattr(response, "status", response)
    return str(getattr(status, "name", status)).split(".")[-1].lower()


def wait_for(poll, done, interval, timeout, sleep=time.sleep, clock=time.monotonic, report=None):
    """Call ``poll()`` until ``done(result)`` or ``timeout`` seconds; returns (result, finished)."""
    start = clock()
    while True:
        result = poll()
        if report:
            report(result)
        if done(result):
            return result, True
        if timeout is not None and clock() - start + interval > timeout:
            return result, False
        sleep(interval)


# ============ commands ============


def _owner(args, api=None, placeholder=None):
    """The Kaggle user name: --owner, the credentials' user name, the API's, else ``placeholder``."""
    credentials = find_credentials()
    owner = (getattr(args, "owner", None) or (credentials and credentials.username)
             or (getattr(api, "config_values", None) or {}).get("username") or placeholder)
    if not owner:
        raise KaggleCommandError("cannot tell your Kaggle user name: pass --owner USER "
                                 "(or set KAGGLE_USERNAME)")
    return owner


def kernel_ref(name, owner):
    """owner/slug for a KERNEL argument: "owner/slug", a slug, or a kit notebook ("01")."""
    if "/" in name:
        return check_ref(name, 2, "kernel", "owner/kernel-slug")
    try:
        return f"{owner}/{kernel_slug(resolve_notebook(name))}"
    except KaggleCommandError:
        return f"{owner}/{name}"


def cmd_download(args, get_api):
    """Download and unpack a competition into --out, then check its layout."""
    out = args.out or os.path.join("data", "cassava" if args.competition == COMPETITION else args.competition)
    require_free(out)
    api = get_api()
    staged = temp_beside(out, "download")
    try:
        print(f"downloading {args.competition} into {out} ...")
        call_api(f"download {args.competition}", api.competition_download_files, args.competition, path=staged,
              quiet=False, competition=args.competition)
        unpacked = os.path.join(staged, "unpacked")
        os.makedirs(unpacked)
        for name in sorted(os.listdir(staged)):
            path = os.path.join(staged, name)
            if name.endswith(".zip"):
                try:
                    with zipfile.ZipFile(path) as archive:
                        archive.extractall(unpacked)
                except zipfile.BadZipFile:
                    raise KaggleCommandError(f"the download {name} is not a valid zip: rerun the command") from None
                os.remove(path)
            elif name != "unpacked":
                os.replace(path, os.path.join(unpacked, name))
        if not os.listdir(unpacked):
            raise KaggleCommandError(f"Kaggle sent no files for {args.competition}: check the competition slug")
        layout = check_layout(unpacked)
        move_into_place(unpacked, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    layout.root = out
    print("\n".join(describe_layout(layout)))
    if layout.complete:
        print(f"use it with --data {out} (e.g. python -m kitlib finetune --data {out} ...)")
    return 0 if layout.complete else 1


def cmd_publish_kit(args, get_api):
    """Upload kitlib/ as the kit's Kaggle dataset: a new dataset, or a new version of it."""
    api = get_api()
    ref = check_ref(args.dataset or f"{_owner(args, api)}/{KIT_DATASET_SLUG}", 2, "--dataset", "USER/kitlib")
    slug = ref.split("/")[1]
    if not 6 <= len(slug) <= 50:
        raise KaggleCommandError(f"dataset slug {slug!r} must have 6 to 50 characters (Kaggle's rule)")
    staging = tempfile.mkdtemp(prefix="kitlib-publish-")
    try:
        staged = stage_kit(repo_root(), staging)
        with open(os.path.join(staging, DATASET_METADATA), "w", encoding="utf-8") as f:
            json.dump(dataset_metadata(ref, args.license), f, indent=2)
        try:
            api.dataset_status(ref)
            exists = True
        except Exception as err:  # noqa: BLE001
            if http_status(err) not in (403, 404):
                raise KaggleCommandError(explain_api_error(err, f"look up the dataset {ref}")) from None
            exists = False
        notes = args.notes or f"kitlib {__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
        if exists:
            response = call_api(f"add a version to {ref}", api.dataset_create_version, staging, notes, quiet=False,
                             dir_mode="zip")
        else:
            response = call_api(f"create the dataset {ref}", api.dataset_create_new, staging, public=args.public,
                             quiet=False, dir_mode="zip")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    error = response_error(response)
    if error:
        raise KaggleCommandError(f"Kaggle did not take the dataset {ref}: {error}")
    url = getattr(response, "url", None) or f"{KAGGLE_URL}/datasets/{ref}"
    print(f"{'new version of' if exists else 'created'} {url} ({', '.join(staged)}; folders upload as .zip, "
          "which Kaggle unpacks)")
    print(f"attached to a notebook it is {KAGGLE_INPUT}/{slug}/kitlib"
          + ("" if slug == KIT_DATASET_SLUG else
             f"; the notebooks look in {KAGGLE_INPUT}/{KIT_DATASET_SLUG}: name it {KIT_DATASET_SLUG} instead"))
    return 0


def preflight_notebook(notebook, accelerator, data_dir):
    """The TPU preflight of a notebook's run (its CONFIG cell's settings, planned on `data_dir` as on a
    v5e-8). Returns None when it fits, else `kitlib.preflight.EXIT_DOES_NOT_FIT` (after saying why)."""
    if machine_shape(accelerator)[1] != "TpuV5E8":
        raise KaggleCommandError("--preflight compiles for Kaggle's TPU v5e-8: push with --accelerator tpu")
    fields = notebook_config_fields(notebook)
    if fields is None:
        raise KaggleCommandError(f"--preflight covers the notebooks that pretrain (01); "
                                 f"{os.path.basename(notebook)} builds no PretrainConfig")
    from kitlib import preflight  # noqa: PLC0415 - Keras and JAX only for a preflight
    from kitlib.swav import pretrain  # noqa: PLC0415

    out = tempfile.mkdtemp(prefix="kitlib-preflight-")
    try:
        config = pretrain.PretrainConfig(**dict(fields, data_dir=data_dir, out_dir=out, preflight="tpu-v5e-8"))
        report = pretrain.run(pretrain.plan(config))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if report.fits:
        return None
    advice = (f"set global_batch_size={report.max_global_batch_size} in its CONFIG cell"
              if report.max_global_batch_size else "use a smaller backbone or crops in its CONFIG cell")
    print(f"kitlib kaggle push: refused: {os.path.basename(notebook)} does not fit a TPU v5e-8 at global batch "
          f"{report.global_batch_size}; {advice}. Nothing was pushed.", file=sys.stderr)
    return preflight.EXIT_DOES_NOT_FIT


def cmd_push(args, get_api):
    """Write the kernel folder of a kit notebook and (unless --dry-run) push it."""
    notebook = resolve_notebook(args.notebook)
    defaults = defaults_for(notebook)
    accelerator = args.accelerator or defaults.accelerator
    machine_shape(accelerator)  # an unknown accelerator fails before anything else
    internet = parse_switch(args.internet) if args.internet is not None else defaults.internet
    if getattr(args, "preflight", False):
        refusal = preflight_notebook(notebook, accelerator, args.data)
        if refusal:
            return refusal
    if args.dry_run and not args.out:
        raise KaggleCommandError("--dry-run writes the kernel folder only: pass --out DIR")
    api = None if args.dry_run else get_api()
    owner = _owner(args, api, placeholder=OWNER_PLACEHOLDER if args.dry_run else None)
    kernels = [f"{owner}/{kernel_slug(resolve_notebook(n))}" for n in defaults.kernels] + list(args.kernel_source)
    if args.resume:  # the previous version's output, attached under /kaggle/input, and the notebook's RESUME on
        kernels.append(f"{owner}/{kernel_slug(notebook)}")
    competition = COMPETITION if args.competition is None else args.competition
    meta = kernel_metadata(notebook, owner, accelerator, internet, competition, args.kit_dataset,
                           args.dataset, list(defaults.models) + list(args.model), kernels, not args.public)
    folder = args.out or tempfile.mkdtemp(prefix="kitlib-kernel-")
    try:
        write_kernel_folder(notebook, meta, folder, [(RESUME_KNOB, "True")] if args.resume else [])
        sources = ", ".join(meta["competition_sources"] + meta["dataset_sources"] + meta["model_sources"]
                            + meta["kernel_sources"])
        print(f"{meta['id']}: {meta['code_file']} on {meta.get('machine_shape', 'CPU')}, internet "
              f"{'on' if internet else 'off'}, sources: {sources or 'none'}")
        if args.dry_run:
            print(f"wrote {folder}/{KERNEL_METADATA} and {meta['code_file']} (dry run: nothing pushed)")
            if owner == OWNER_PLACEHOLDER:
                print("the kernel id's owner is a placeholder: pass --owner USER or set credentials")
            return 0
        response = call_api(f"push {meta['id']}", api.kernels_push, folder)
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    if getattr(response, "error", None):
        raise KaggleCommandError(f"Kaggle did not take {meta['id']}: {response.error}")
    for kind in ("dataset", "competition", "kernel", "model"):
        invalid = getattr(response, f"invalid_{kind}_sources", None)
        if invalid:
            print(f"warning: Kaggle did not attach these {kind} sources: {', '.join(map(str, invalid))}",
                  file=sys.stderr)
    url = getattr(response, "url", None) or f"{KAGGLE_URL}/code/{meta['id']}"
    version = getattr(response, "version_number", None)
    print(f"pushed{f' version {version}' if version else ''}: {url}")
    print(f"follow it with: python -m kitlib kaggle status {meta['id']} --wait")
    return 0


def cmd_status(args, get_api):
    """Print a kernel run's state; with --wait, poll until it ends."""
    api = get_api()
    kernel = kernel_ref(args.kernel, _owner(args, api))

    def poll():
        return call_api(f"read the status of {kernel}", api.kernels_status, kernel)

    def report(response):
        message = getattr(response, "failure_message", None)
        print(f"{time.strftime('%H:%M:%S')} {kernel}: {status_name(response)}" + (f" ({message})" if message else ""),
              flush=True)

    response, finished = wait_for(poll, lambda r: not args.wait or status_name(r) in TERMINAL_STATES,
                                  args.interval, args.timeout, report=report)
    state = status_name(response)
    if args.wait and not finished:
        raise KaggleCommandError(f"{kernel} still {state} after {args.timeout:g} s: rerun status --wait later")
    if state == "complete":
        print(f"fetch its outputs: python -m kitlib kaggle output {kernel} --out runs/{kernel.split('/')[1]}")
    return 1 if state in ("error", "cancel_requested", "cancel_acknowledged") else 0


def cmd_output(args, get_api):
    """Fetch a kernel run's output files into --out (all or nothing)."""
    require_free(args.out)
    api = get_api()
    kernel = kernel_ref(args.kernel, _owner(args, api))
    staged = temp_beside(args.out, "output")
    try:
        call_api(f"fetch the output of {kernel}", api.kernels_output, kernel, path=staged, file_pattern=args.pattern,
              force=True, quiet=True)
        files = sorted(os.path.relpath(os.path.join(d, n), staged) for d, _, names in os.walk(staged) for n in names)
        if not files:
            raise KaggleCommandError(f"{kernel} has no output yet: check `python -m kitlib kaggle status {kernel}`")
        move_into_place(staged, args.out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    for name in files:
        print(f"  {os.path.join(args.out, name)}  {os.path.getsize(os.path.join(args.out, name)):,} bytes")
    for name in files:
        path = os.path.join(args.out, name)
        if os.path.basename(name) == "backbone.keras":
            print(f"fine-tune it: python -m kitlib finetune --data DIR --backbone {path} --out runs/bit")
        if os.path.basename(name) == "classifier.json":
            print(f"predict with it: python -m kitlib predict --data DIR --model {os.path.dirname(path)} "
                  "--out submission.csv")
    print(f"or attach it to another kernel: push ... --kernel-source {kernel}")
    return 0


COMMANDS = {"download": cmd_download, "publish-kit": cmd_publish_kit, "push": cmd_push, "status": cmd_status,
            "output": cmd_output}


_POLL_SECONDS = checks.number(0, 3600)  # an hour apart is still a poll; 0 polls at once (scripts, tests)
_TIMEOUT_SECONDS = checks.number(0, checks.MAX_MINUTES * 60)


def _regex(text):
    try:
        re.compile(text)
    except re.error as err:
        raise ValueError(f"{text!r} is not a regular expression ({err})") from None
    return True


def add_arguments(parser):
    """The ``kaggle`` sub-commands."""
    sub = parser.add_subparsers(dest="kaggle_command", metavar="ACTION", required=True)
    p = sub.add_parser("download", help="download + unpack the competition, then check its layout")
    p.add_argument("--competition", default=COMPETITION, help=f"competition slug (default {COMPETITION})")
    p.add_argument("--out", default=None, help="folder to create (default data/cassava); must be new or empty")

    p = sub.add_parser("publish-kit", help=f"upload kitlib/ as the dataset USER/{KIT_DATASET_SLUG} (new or a version)")
    p.add_argument("--dataset", default=None, help=f"USER/SLUG (default: you/{KIT_DATASET_SLUG}, mounted at "
                                                   f"{KAGGLE_INPUT}/{KIT_DATASET_SLUG})")
    p.add_argument("--notes", default=None, help="version notes")
    p.add_argument("--license", default="unknown", help="Kaggle license name for a new dataset")
    p.add_argument("--public", action="store_true", help="make a new dataset public (default private)")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")

    p = sub.add_parser("push", help="write a notebook's kernel folder and push it to Kaggle")
    p.add_argument("notebook", metavar="NOTEBOOK", help="a notebook of notebooks/: 01, 02_finetune_bit, ...")
    p.add_argument("--accelerator", default=None,
                   help="tpu (TpuV5E8), gpu (NvidiaTeslaT4), cpu, or a Kaggle id (default: per notebook)")
    p.add_argument("--internet", default=None, help="on | off (default: per notebook; 04 off)")
    p.add_argument("--dataset", action="append", default=[], help="another dataset source OWNER/SLUG (repeat)")
    p.add_argument("--model", action="append", default=[],
                   help="a model source owner/model/framework/variation/version (repeat)")
    p.add_argument("--kernel-source", action="append", default=[], help="a kernel whose output to attach (repeat)")
    p.add_argument("--competition", default=None, help=f"competition source (default {COMPETITION}; '' none)")
    p.add_argument("--kit-dataset", default=None, help=f"the kit's dataset (default you/{KIT_DATASET_SLUG})")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")
    p.add_argument("--public", action="store_true", help="a public kernel (default private)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run the previous version left: attach its output and set RESUME = True")
    p.add_argument("--dry-run", action="store_true", help="only write the folder (needs --out; no credentials)")
    p.add_argument("--out", default=None, help="where to write the kernel folder (default: a temporary one)")
    p.add_argument("--preflight", action="store_true",
                   help="first compile the notebook's run for a TPU v5e-8 (its CONFIG cell, planned on --data; "
                        "kitlib pretrain --preflight) and refuse to push one that does not fit (exit 4)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"with --preflight: a local copy of the data (default "
                   f"{DEFAULT_DATA}, where `kaggle download` puts it)")

    p = sub.add_parser("status", help="a kernel run's state (--wait: until it ends)")
    p.add_argument("kernel", metavar="KERNEL", help="owner/slug, a slug, or a kit notebook number (01)")
    p.add_argument("--wait", action="store_true", help="poll until the run completes or fails")
    p.add_argument("--interval", type=checks.parse_as(float, _POLL_SECONDS, "seconds between polls"), default=30.0,
                   help=f"seconds between polls (default 30; valid: {_POLL_SECONDS.describe})")
    p.add_argument("--timeout", type=checks.parse_as(float, _TIMEOUT_SECONDS, "seconds to wait"), default=None,
                   help=f"give up waiting after this many seconds (valid: {_TIMEOUT_SECONDS.describe})")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")

    p = sub.add_parser("output", help="fetch a kernel run's output files")
    p.add_argument("kernel", metavar="KERNEL", help="owner/slug, a slug, or a kit notebook number (01)")
    p.add_argument("--out", required=True, help="folder to create; must be new or empty")
    p.add_argument("--pattern", default=None, help="only files whose name matches this regex",
                   type=checks.parse_as(str, checks.satisfies(_regex, "a Python regular expression"), "file names"))
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")


def run_args(args, get_api=authenticated_api):
    """Run one sub-command; a `KaggleCommandError` becomes one line on stderr and exit code 2."""
    try:
        return COMMANDS[args.kaggle_command](args, get_api)
    except KaggleCommandError as err:
        print(redact(f"kitlib kaggle {args.kaggle_command}: error: {err}"), file=sys.stderr)
        return 2


def main(argv=None, get_api=authenticated_api):
    """``python -m kitlib kaggle`` without the top-level CLI (for tests and scripts)."""
    parser = checks.Parser(prog="python -m kitlib kaggle")
    add_arguments(parser)
    return run_args(parser.parse_args(argv), get_api)
