#!/usr/bin/env python3
"""Launch and manage rt2_jax training on a Cloud TPU VM slice, from a workstation.

    python launch/tpu.py create   # queue a slice and wait until it is ACTIVE
    python launch/tpu.py setup    # copy this tree (or git clone), venv, pip install on all workers
    python launch/tpu.py train    # start rt2_jax.train on all workers, in the background
    python launch/tpu.py up       # create + setup + train
    python launch/tpu.py logs | status | stop | delete

Every subcommand takes --dry-run: it prints the commands (one per line, shell-quoted) instead
of running them; lines starting with '#' describe steps done here in Python. Only the standard
library and the gcloud CLI are used. See launch/README.md.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Where things live on each TPU VM worker. "$HOME" is expanded by the remote shell.
REMOTE_SRC = '"$HOME/rt2_jax"'
REMOTE_VENV = '"$HOME/rt2_jax_venv"'
REMOTE_PYTHON = '"$HOME/rt2_jax_venv/bin/python"'
REMOTE_LOG_DIR = '"$HOME/rt2_jax_logs"'
REMOTE_LOG = '"$HOME/rt2_jax_logs/train.log"'
REMOTE_PID = '"$HOME/rt2_jax_logs/train.pid"'
REMOTE_TARBALL = "rt2_jax-src.tar.gz"  # relative to the remote home directory
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# Flag (argparse dest) -> environment variable used when the flag is not given.
ENV_VARS = {
    "project": "RT2_TPU_PROJECT",
    "zone": "RT2_TPU_ZONE",
    "name": "RT2_TPU_NAME",
    "accelerator_type": "RT2_TPU_TYPE",
    "runtime_version": "RT2_TPU_RUNTIME",
    "bucket": "RT2_BUCKET",
}

# Recommended TPU software versions for JAX (cloud.google.com/tpu/docs/runtimes).
RUNTIME_DEFAULTS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
# v2-v5p accelerator types count TensorCores (2 per chip, 4 chips per host);
# v5litepod and v6e count chips (up to 8 on a single host, 4 per host in multi-host slices).
CORE_COUNTED = {"v2", "v3", "v4", "v5p"}
CHIP_COUNTED_SIZES = {1, 4, 8, 16, 32, 64, 128, 256}
ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
TERMINAL_STATES = {"FAILED", "SUSPENDING", "SUSPENDED", "DELETING"}


class LaunchError(Exception):
    """A usage or configuration mistake; reported without a traceback, exit code 2."""


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], returncode: int):
        super().__init__(f"command failed with exit code {returncode}: {shlex.join(argv)}")
        self.returncode = returncode


@dataclass(frozen=True)
class Accelerator:
    generation: str
    size: int

    @property
    def hosts(self) -> int:
        if self.generation in CORE_COUNTED:
            return max(1, self.size // 8)
        return 1 if self.size <= 8 else self.size // 4

    @property
    def default_runtime(self) -> str:
        return RUNTIME_DEFAULTS[self.generation]


def parse_accelerator(text: str) -> Accelerator:
    match = ACCELERATOR_RE.match(text)
    if not match:
        hint = " (v5e slices are named v5litepod-N)" if text.startswith("v5e") else ""
        raise LaunchError(
            f"bad accelerator type {text!r}{hint}: expected GENERATION-SIZE with GENERATION one "
            f"of {', '.join(RUNTIME_DEFAULTS)}, e.g. v5p-128, v4-128, v5litepod-256, v6e-256"
        )
    accel = Accelerator(match.group(1), int(match.group(2)))
    if accel.generation in CORE_COUNTED and accel.size % 8:
        raise LaunchError(f"bad accelerator type {text!r}: {accel.generation} sizes count "
                          "TensorCores and are multiples of 8 (e.g. v5p-8, v5p-128)")
    if accel.generation not in CORE_COUNTED and accel.size not in CHIP_COUNTED_SIZES:
        sizes = ", ".join(str(s) for s in sorted(CHIP_COUNTED_SIZES))
        raise LaunchError(f"bad accelerator type {text!r}: {accel.generation} sizes count chips "
                          f"and are one of {sizes}")
    return accel


class Runner:
    """Runs commands, or with dry_run prints them; real runs echo each command first."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out if out is not None else sys.stdout

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def note(self, text: str) -> None:
        self._print(f"# {text}")

    def show(self, argv: Sequence[str]) -> None:
        self._print(shlex.join(argv) if self.dry_run else f"+ {shlex.join(argv)}")

    def run(self, argv: Sequence[str]) -> None:
        self.show(argv)
        if self.dry_run:
            return
        returncode = _call(lambda: subprocess.call(list(argv)), argv)
        if returncode:
            raise CommandFailed(argv, returncode)

    def query(self, argv: Sequence[str]) -> str:
        """Runs argv and returns its stdout (real runs only; not echoed)."""
        proc = _call(lambda: subprocess.run(list(argv), capture_output=True, text=True), argv)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise CommandFailed(argv, proc.returncode)
        return proc.stdout

    def local(self, description: str, action: Callable[[], None]) -> None:
        self.note(description)
        if not self.dry_run:
            action()


def _call(fn, argv: Sequence[str]):
    try:
        return fn()
    except FileNotFoundError as e:
        raise LaunchError(f"{argv[0]!r} not found on PATH; install the Google Cloud CLI "
                          "(https://cloud.google.com/sdk/docs/install)") from e


# ---------------------------------------------------------------------------------------------
# Command builders (pure: argv lists and remote shell scripts).


def gcloud_tpus(args, *words: str, alpha: bool = False) -> list[str]:
    prefix = ["gcloud", "alpha"] if alpha else ["gcloud"]
    return [*prefix, "compute", "tpus", *words, f"--zone={args.zone}", f"--project={args.project}"]


def ssh(args, worker: str, script: str) -> list[str]:
    return [*gcloud_tpus(args, "tpu-vm", "ssh", args.name), f"--worker={worker}",
            f"--command={script}"]


def script(*statements: str) -> str:
    """Joins statements into one line for `ssh --command` (bash on the worker)."""
    line = "set -eu"
    for statement in statements:
        line += (" " if line.endswith("&") else "; ") + statement
    return line


PID_ALIVE = f'[ -f {REMOTE_PID} ] && kill -0 "$(cat {REMOTE_PID})" 2>/dev/null'


def create_command(args, accel: Accelerator) -> list[str]:
    argv = gcloud_tpus(args, "queued-resources", "create", args.name, alpha=args.best_effort)
    argv += [f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
             f"--runtime-version={args.runtime_version or accel.default_runtime}"]
    if args.spot:
        argv.append("--spot")
    if args.best_effort:
        argv.append("--best-effort")
    if args.reserved:
        argv.append("--reserved")
    return argv + list(args.gcloud_arg)


def describe_state_command(args) -> list[str]:
    return gcloud_tpus(args, "queued-resources", "describe", args.name,
                       "--format=value(state.state)")


def fetch_script(args) -> str:
    """Shell statements that put the source tree at REMOTE_SRC."""
    if args.repo_url:
        url, ref = shlex.quote(args.repo_url), shlex.quote(args.ref)
        return (f"if [ ! -d {REMOTE_SRC}/.git ]; then rm -rf {REMOTE_SRC}; "
                f"git clone --quiet {url} {REMOTE_SRC}; fi; "
                f"git -C {REMOTE_SRC} fetch --quiet {url} {ref}; "
                f"git -C {REMOTE_SRC} checkout --quiet --force --detach FETCH_HEAD")
    return (f"rm -rf {REMOTE_SRC}; mkdir -p {REMOTE_SRC}; "
            f'tar -xzf "$HOME/{REMOTE_TARBALL}" -C {REMOTE_SRC}')


def setup_script(args) -> str:
    python = shlex.quote(args.python)
    lock = "-o DPkg::Lock::Timeout=600"  # fresh VMs often run unattended-upgrades at boot
    return script(
        f'if {PID_ALIVE}; then echo "$(hostname): training is running; run stop first" >&2; '
        "exit 1; fi",
        fetch_script(args),
        f"if ! command -v {python} >/dev/null 2>&1; then sudo apt-get {lock} update -qq; "
        f"sudo DEBIAN_FRONTEND=noninteractive apt-get {lock} install -y -qq "
        f"{python} {python}-venv; fi",
        f"if [ ! -x {REMOTE_PYTHON} ]; then {python} -m venv {REMOTE_VENV}; fi",
        f"{REMOTE_PYTHON} -m pip install --quiet --upgrade pip",
        f"cd {REMOTE_SRC}",
        f"{REMOTE_PYTHON} -m pip install --quiet -e '.[tpu]' -f {LIBTPU_FIND_LINKS}",
        f'echo "$(hostname): rt2_jax installed, jax $({REMOTE_PYTHON} -c '
        "'import jax; print(jax.__version__)')\"",
    )


def train_argv(args, workdir: str, overrides: Sequence[str]) -> list[str]:
    return ["-m", "rt2_jax.train", f"--config={args.config}", f"--workdir={workdir}", *overrides]


def train_script(args, workdir: str, overrides: Sequence[str]) -> str:
    env = "".join(f"{shlex.quote(kv)} " for kv in args.env)
    command = " ".join(shlex.quote(a) for a in train_argv(args, workdir, overrides))
    return script(
        f"mkdir -p {REMOTE_LOG_DIR}",
        f'if {PID_ALIVE}; then echo "$(hostname): training already running (pid '
        f'$(cat {REMOTE_PID})); run stop first" >&2; exit 1; fi',
        f"cd {REMOTE_SRC}",
        f'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting rt2_jax.train" >> {REMOTE_LOG}',
        f"nohup env {env}{REMOTE_PYTHON} {command} >> {REMOTE_LOG} 2>&1 < /dev/null &",
        f"echo $! > {REMOTE_PID}",
        'echo "$(hostname): training started (pid $!), log: ~/rt2_jax_logs/train.log"',
    )


def stop_script(timeout_s: int, force: bool) -> str:
    on_timeout = ('kill -KILL "$pid"; echo "$(hostname): sent SIGKILL to $pid"' if force else
                  'echo "$(hostname): $pid still running after ' + str(timeout_s) +
                  's (use --force to SIGKILL)" >&2; exit 1')
    return script(
        f'if ! {{ {PID_ALIVE}; }}; then echo "$(hostname): not running"; exit 0; fi',
        f"pid=$(cat {REMOTE_PID})",
        'kill -TERM "$pid"',
        'echo "$(hostname): sent SIGTERM to $pid (the trainer saves a checkpoint)"',
        f'for _ in $(seq {timeout_s}); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done',
        f'if kill -0 "$pid" 2>/dev/null; then {on_timeout}; fi',
        'echo "$(hostname): stopped"',
    )


def status_script() -> str:
    return script(
        f'if {PID_ALIVE}; then echo "$(hostname): training running (pid $(cat {REMOTE_PID}))"; '
        'else echo "$(hostname): training not running"; fi',
        f"tail -n 2 {REMOTE_LOG} 2>/dev/null | sed 's/^/    /' || true",
    )


# ---------------------------------------------------------------------------------------------
# Subcommands.


def cmd_create(args, runner: Runner) -> None:
    accel = parse_accelerator(require(args, "accelerator_type", "--accelerator-type"))
    runner.run(create_command(args, accel))
    if not args.wait:
        return
    poll = describe_state_command(args)
    if runner.dry_run:
        runner.note(f"repeated every {args.poll_seconds}s until the state is ACTIVE:")
        runner.show(poll)
        return
    runner.show(poll)
    start, last, polls, failures = time.monotonic(), None, 0, 0
    while True:
        try:
            state, failures = runner.query(poll).strip() or "UNKNOWN", 0
        except CommandFailed:
            failures += 1
            if failures >= 5:  # tolerate a few transient API errors while waiting for hours
                raise
            state = "UNKNOWN (describe failed; retrying)"
        elapsed = int(time.monotonic() - start)
        if state != last or polls % 10 == 0:
            clock = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
            print(f"[{clock}] queued resource {args.name}: {state}", flush=True)
        if state == "ACTIVE":
            print(f"{args.name} ({args.accelerator_type}, {accel.hosts} workers) is ready.")
            return
        if state in TERMINAL_STATES:
            raise LaunchError(f"queued resource {args.name} is {state}; inspect it with "
                              f"`{shlex.join(poll[:-1])}`, then run `delete` and `create` again")
        if args.wait_timeout and elapsed > args.wait_timeout:
            raise LaunchError(f"{args.name} not ACTIVE after {args.wait_timeout}s (still "
                              "queued; run `status` to check, or `delete` to give up)")
        last, polls = state, polls + 1
        time.sleep(args.poll_seconds)


def cmd_setup(args, runner: Runner) -> None:
    if not args.repo_url:
        src = Path(args.src).resolve()
        tarball = Path(tempfile.gettempdir()) / f"rt2_jax-src-{args.name}.tar.gz"
        runner.local(f"pack {src} (files git tracks or does not ignore) into {tarball}",
                     lambda: pack_tree(src, tarball))
        runner.run([*gcloud_tpus(args, "tpu-vm", "scp", str(tarball),
                                 f"{args.name}:{REMOTE_TARBALL}"), "--worker=all"])
    runner.run(ssh(args, "all", setup_script(args)))


def cmd_train(args, runner: Runner, overrides: Sequence[str]) -> None:
    accel = parse_accelerator(args.accelerator_type) if args.accelerator_type else None
    workdir = resolve_workdir(args, accel)
    for kv in args.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", kv):
            raise LaunchError(f"bad --env {kv!r}: expected KEY=VALUE")
    runner.note(f"workdir: {workdir}")
    runner.run(ssh(args, "all", train_script(args, workdir, overrides)))


def cmd_up(args, runner: Runner, overrides: Sequence[str]) -> None:
    accel = parse_accelerator(require(args, "accelerator_type", "--accelerator-type"))
    resolve_workdir(args, accel)  # fail before renting anything
    args.wait = True
    cmd_create(args, runner)
    cmd_setup(args, runner)
    cmd_train(args, runner, overrides)


def cmd_logs(args, runner: Runner) -> None:
    follow = "-F " if args.follow else ""
    runner.run(ssh(args, args.worker, f"tail -n {args.lines} {follow}{REMOTE_LOG}"))


def cmd_status(args, runner: Runner) -> None:
    runner.run(gcloud_tpus(args, "queued-resources", "describe", args.name))
    runner.run(ssh(args, "all", status_script()))


def cmd_stop(args, runner: Runner) -> None:
    runner.run(ssh(args, "all", stop_script(args.timeout, args.force)))


def cmd_delete(args, runner: Runner) -> None:
    argv = gcloud_tpus(args, "queued-resources", "delete", args.name, "--force")
    if args.yes:
        argv.append("--quiet")
    if args.use_async:
        argv.append("--async")
    runner.run(argv)


# ---------------------------------------------------------------------------------------------
# Helpers.


def require(args, dest: str, flag: str) -> str:
    value = getattr(args, dest)
    if not value:
        raise LaunchError(f"missing {flag.lstrip('-').replace('-', ' ')}: pass {flag}=... or "
                          f"set {ENV_VARS[dest]}")
    return value


def resolve_workdir(args, accel: Accelerator | None) -> str:
    if args.workdir:
        workdir = args.workdir.rstrip("/")
    elif args.bucket:
        bucket = args.bucket.removeprefix("gs://").strip("/")
        run_name = args.run_name or Path(args.config.split(":")[0]).stem
        workdir = f"gs://{bucket}/rt2_jax/{run_name}"
    else:
        raise LaunchError("missing workdir: pass --workdir=gs://BUCKET/PATH, or --bucket=BUCKET "
                          f"(or set {ENV_VARS['bucket']}) to use gs://BUCKET/rt2_jax/RUN_NAME")
    if not workdir.startswith("gs://") and (accel is None or accel.hosts > 1):
        raise LaunchError(f"workdir {workdir!r} must be a gs:// path: every worker of a "
                          "multi-host slice writes checkpoints there, and TPU VM disks vanish on "
                          "preemption or delete")
    return workdir


def split_overrides(extra: Sequence[str]) -> list[str]:
    """Normalizes pass-through `--config.a.b=v` / `--config.a.b v` into `--config.a.b=v`."""
    overrides, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if arg == "--":
            i += 1
            continue
        if not arg.startswith("--config."):
            raise LaunchError(f"unrecognized argument {arg!r} (only --config.FIELD=VALUE "
                              "overrides are passed through to rt2_jax.train)")
        if "=" not in arg and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            arg, i = f"{arg}={extra[i + 1]}", i + 1
        overrides.append(arg)
        i += 1
    return overrides


def pack_tree(src: Path, tarball: Path) -> None:
    """Writes src as a .tar.gz: files git tracks or does not ignore (all but caches without git)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, text=True, check=True).stdout.split("\0")
        files = sorted({f for f in listed if f and (src / f).is_file()})
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", "runs", ".pytest_cache", ".ruff_cache"}
        files = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                       if p.is_file() and not skip & set(p.relative_to(src).parts))
    with tarfile.open(tarball, "w:gz") as tar:
        for name in files:
            tar.add(src / name, arcname=name, recursive=False)
    print(f"packed {len(files)} files ({tarball.stat().st_size / 1e6:.1f} MB)", flush=True)


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--project", help=f"Cloud project [${ENV_VARS['project']}]")
    common.add_argument("--zone", help=f"zone, e.g. us-east5-a [${ENV_VARS['zone']}]")
    common.add_argument("--name", help=f"TPU (and queued resource) name [${ENV_VARS['name']}]")
    common.add_argument("--dry-run", action="store_true", help="print commands, run nothing")

    create = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    create.add_argument("--accelerator-type",
                        help=f"e.g. v5p-128 [${ENV_VARS['accelerator_type']}]")
    create.add_argument("--runtime-version", help="TPU software version; default per generation "
                        f"[${ENV_VARS['runtime_version']}]")
    tier = create.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="Spot capacity (cheaper, preemptible)")
    tier.add_argument("--best-effort", action="store_true",
                      help="best-effort tier (uses `gcloud alpha`)")
    create.add_argument("--reserved", action="store_true", help="use the project's reservation")
    create.add_argument("--gcloud-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for queued-resources create, e.g. "
                        "--gcloud-arg=--network=x (repeatable)")
    create.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait until the queued resource is ACTIVE (default: wait)")
    create.add_argument("--poll-seconds", type=int, default=30)
    create.add_argument("--wait-timeout", type=int, default=0, help="seconds; 0 waits forever")

    setup = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    setup.add_argument("--repo-url", help="git clone this URL on the workers instead of "
                       "copying the local tree")
    setup.add_argument("--ref", default="HEAD", help="branch, tag or commit for --repo-url")
    setup.add_argument("--src", default=str(REPO_ROOT), help="local tree to copy")
    setup.add_argument("--python", default="python3.11", help="interpreter for the venv")

    train = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    train.add_argument("--config", default="configs/palix_55b.py",
                       help="config file, relative to the repo root")
    train.add_argument("--workdir", help="gs://BUCKET/PATH (default gs://BUCKET/rt2_jax/RUN_NAME)")
    train.add_argument("--bucket",
                       help=f"GCS bucket for the default workdir [${ENV_VARS['bucket']}]")
    train.add_argument("--run-name", help="default: the config file's name, e.g. palix_55b")
    train.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                       help="environment variable for the trainer (repeatable)")

    parser = argparse.ArgumentParser(
        prog="tpu.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Flags not given are read from the environment variables in brackets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, create], help="create a slice (queued resource)")
    sub.add_parser("setup", parents=[common, setup], help="install rt2_jax on every worker")
    train_parser = sub.add_parser("train", parents=[common, train], help="start training "
                                  "(extra --config.FIELD=VALUE flags are passed through)")
    train_parser.add_argument("--accelerator-type", help="used only to validate the workdir "
                              f"[${ENV_VARS['accelerator_type']}]")
    sub.add_parser("up", parents=[common, create, setup, train], help="create + setup + train")
    logs = sub.add_parser("logs", parents=[common], help="tail a worker's training log")
    logs.add_argument("--worker", default="0", help="worker index, or 'all' (default 0)")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True)
    sub.add_parser("status", parents=[common], help="queued resource state + trainer per worker")
    stop = sub.add_parser("stop", parents=[common], help="SIGTERM the trainer on every worker")
    stop.add_argument("--timeout", type=int, default=600, help="seconds to wait for the save")
    stop.add_argument("--force", action="store_true", help="SIGKILL after --timeout")
    delete = sub.add_parser("delete", parents=[common], help="delete the slice and its queue entry")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--async", dest="use_async", action="store_true",
                        help="return without waiting for the deletion")
    return parser


SUBCOMMANDS = {"create": cmd_create, "setup": cmd_setup, "logs": cmd_logs, "status": cmd_status,
               "stop": cmd_stop, "delete": cmd_delete}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for dest, var in ENV_VARS.items():
        if hasattr(args, dest) and not getattr(args, dest):
            setattr(args, dest, environ.get(var) or None)
    runner = Runner(args.dry_run)
    try:
        overrides = split_overrides(extra) if args.command in ("train", "up") else []
        if extra and not overrides:
            raise LaunchError(f"unrecognized arguments: {shlex.join(extra)}")
        require(args, "project", "--project")
        require(args, "zone", "--zone")
        require(args, "name", "--name")
        if args.command == "logs" and not re.match(r"^(all|[0-9]+(,[0-9]+)*)$", args.worker):
            raise LaunchError(f"bad --worker {args.worker!r}: expected an index, a list, or all")
        if args.command in ("train", "up"):
            {"train": cmd_train, "up": cmd_up}[args.command](args, runner, overrides)
        else:
            SUBCOMMANDS[args.command](args, runner)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CommandFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.returncode
    except KeyboardInterrupt:
        print("\ninterrupted (a queued resource keeps waiting in the queue; `delete` removes it)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
