"""Tests for launch/tpu.py: dry-run output, flag/env resolution, validation, quoting.

No gcloud needed: dry runs print commands, and real runs use a fake `gcloud` on PATH.
"""
import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU_PY = ROOT / "launch" / "tpu.py"

_spec = importlib.util.spec_from_file_location("launch_tpu", TPU_PY)
tpu = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tpu  # dataclasses look their module up there
_spec.loader.exec_module(tpu)

FLAGS = ["--project=my-proj", "--zone=us-east5-a", "--name=rt2-55b"]


def dry_run(capsys, *argv, environ=None):
    """Runs `tpu.py ARGV --dry-run`; returns (exit code, command lines as argv lists, stderr)."""
    code = tpu.main([*argv, "--dry-run"], environ=environ or {})
    out, err = capsys.readouterr()
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    return code, commands, err


def remote_script(command):
    (script,) = [a.removeprefix("--command=") for a in command if a.startswith("--command=")]
    return script


def test_create_dry_run(capsys):
    code, commands, _ = dry_run(capsys, "create", *FLAGS, "--accelerator-type=v5p-128", "--spot")
    assert code == 0
    create, poll = commands
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "rt2-55b"]
    for flag in ["--node-id=rt2-55b", "--accelerator-type=v5p-128", "--zone=us-east5-a",
                 "--project=my-proj", "--runtime-version=v2-alpha-tpuv5", "--spot"]:
        assert flag in create
    assert poll[3:6] == ["queued-resources", "describe", "rt2-55b"]
    assert "--format=value(state.state)" in poll


@pytest.mark.parametrize("accel,runtime", [
    ("v4-128", "tpu-ubuntu2204-base"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v6e-256", "v2-alpha-tpuv6e"), ("v5p-8", "v2-alpha-tpuv5"),
])
def test_runtime_defaults_per_generation(capsys, accel, runtime):
    _, commands, _ = dry_run(capsys, "create", *FLAGS, f"--accelerator-type={accel}", "--no-wait")
    assert commands == [commands[0]] and f"--runtime-version={runtime}" in commands[0]


def test_create_best_effort_uses_alpha_and_runtime_override(capsys):
    _, commands, _ = dry_run(capsys, "create", *FLAGS, "--accelerator-type=v6e-16",
                             "--best-effort", "--runtime-version=custom-rt",
                             "--gcloud-arg=--network=my-net", "--no-wait")
    (create,) = commands
    assert create[:3] == ["gcloud", "alpha", "compute"]
    assert "--best-effort" in create and "--network=my-net" in create
    assert "--runtime-version=custom-rt" in create


@pytest.mark.parametrize("accel", ["v5p-100", "v5e-16", "tpu-128", "v5litepod-12", "v5p"])
def test_bad_accelerator_type(capsys, accel):
    code, commands, err = dry_run(capsys, "create", *FLAGS, f"--accelerator-type={accel}")
    assert code == 2 and not commands
    assert "bad accelerator type" in err


def test_accelerator_hosts():
    assert tpu.parse_accelerator("v5p-128").hosts == 16
    assert tpu.parse_accelerator("v4-8").hosts == 1
    assert tpu.parse_accelerator("v5litepod-8").hosts == 1
    assert tpu.parse_accelerator("v6e-256").hosts == 64


def test_setup_dry_run_copies_tree(capsys):
    code, commands, _ = dry_run(capsys, "setup", *FLAGS)
    assert code == 0
    scp, ssh = commands
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5].endswith(".tar.gz") and scp[6] == "rt2-55b:rt2_jax-src.tar.gz"
    assert "--worker=all" in scp and "--zone=us-east5-a" in scp
    assert ssh[3:6] == ["tpu-vm", "ssh", "rt2-55b"] and "--worker=all" in ssh
    script = remote_script(ssh)
    assert "tar -xzf" in script and "-m venv" in script
    assert "pip install --quiet -e '.[tpu]'" in script
    _bash_syntax_ok(script)


def test_setup_dry_run_git_clone(capsys):
    code, commands, _ = dry_run(capsys, "setup", *FLAGS, "--repo-url=https://example.com/r.git",
                                "--ref=v1.0")
    assert code == 0
    (ssh,) = commands  # nothing to copy
    script = remote_script(ssh)
    assert "git clone --quiet https://example.com/r.git" in script
    assert "fetch --quiet https://example.com/r.git v1.0" in script
    _bash_syntax_ok(script)


def test_train_dry_run_with_overrides(capsys):
    code, commands, _ = dry_run(capsys, "train", *FLAGS, "--workdir=gs://bkt/runs/a",
                                "--config.optimizer.lr=1e-4", "--config.note", "hello world",
                                "--config.tag=two words; rm -rf ~")
    assert code == 0
    (ssh,) = commands
    assert "--worker=all" in ssh
    script = remote_script(ssh)
    assert "nohup" in script and ">> \"$HOME/rt2_jax_logs/train.log\" 2>&1" in script
    _bash_syntax_ok(script)
    # The trainer's own argv, as the remote shell will split it.
    words = shlex.split(script[script.index("-m rt2_jax.train"):].split(">>")[0])
    assert words == ["-m", "rt2_jax.train", "--config=configs/palix_55b.py",
                     "--workdir=gs://bkt/runs/a", "--config.optimizer.lr=1e-4",
                     "--config.note=hello world", "--config.tag=two words; rm -rf ~"]


def test_train_workdir_from_bucket_env(capsys):
    environ = {"RT2_TPU_PROJECT": "env-proj", "RT2_TPU_ZONE": "europe-west4-b",
               "RT2_TPU_NAME": "env-tpu", "RT2_BUCKET": "gs://env-bucket/"}
    code, commands, _ = dry_run(capsys, "train", "--config=configs/palix_5b.py", environ=environ)
    assert code == 0
    (ssh,) = commands
    assert ssh[5] == "env-tpu"
    assert "--project=env-proj" in ssh and "--zone=europe-west4-b" in ssh
    assert "--workdir=gs://env-bucket/rt2_jax/palix_5b" in remote_script(ssh)


def test_flags_override_env(capsys):
    environ = {"RT2_TPU_PROJECT": "env-proj", "RT2_TPU_ZONE": "env-zone", "RT2_TPU_NAME": "x"}
    _, commands, _ = dry_run(capsys, "status", "--project=flag-proj", environ=environ)
    assert all("--project=flag-proj" in c and "--zone=env-zone" in c for c in commands)


@pytest.mark.parametrize("missing,flag,var", [
    ("--project=my-proj", "--project", "RT2_TPU_PROJECT"),
    ("--zone=us-east5-a", "--zone", "RT2_TPU_ZONE"),
    ("--name=rt2-55b", "--name", "RT2_TPU_NAME"),
])
def test_missing_setting_is_a_clear_error(capsys, missing, flag, var):
    flags = [f for f in FLAGS if f != missing]
    code, commands, err = dry_run(capsys, "delete", *flags)
    assert code != 0 and not commands
    assert flag in err and var in err


def test_missing_accelerator_type_names_flag_and_env(capsys):
    code, _, err = dry_run(capsys, "create", *FLAGS)
    assert code == 2 and "--accelerator-type" in err and "RT2_TPU_TYPE" in err


def test_train_needs_gcs_workdir(capsys):
    code, _, err = dry_run(capsys, "train", *FLAGS, "--workdir=runs/local")
    assert code == 2 and "gs://" in err
    code, _, err = dry_run(capsys, "train", *FLAGS)
    assert code == 2 and "--workdir" in err and "RT2_BUCKET" in err
    # A single-host slice may use a local workdir.
    code, _, _ = dry_run(capsys, "train", *FLAGS, "--workdir=runs/local",
                         "--accelerator-type=v5p-8")
    assert code == 0


def test_train_rejects_unknown_flags(capsys):
    code, _, err = dry_run(capsys, "train", *FLAGS, "--workdir=gs://b/r", "--learning-rate=3")
    assert code == 2 and "--learning-rate" in err


def test_delete_logs_stop_status_dry_run(capsys):
    _, (delete,), _ = dry_run(capsys, "delete", *FLAGS, "--yes")
    assert delete[3:6] == ["queued-resources", "delete", "rt2-55b"]
    assert "--force" in delete and "--quiet" in delete and "--project=my-proj" in delete
    _, (logs,), _ = dry_run(capsys, "logs", *FLAGS, "--worker=3", "--lines=20")
    assert "--worker=3" in logs and "tail -n 20 -F" in remote_script(logs)
    _, (stop,), _ = dry_run(capsys, "stop", *FLAGS)
    assert "--worker=all" in stop and "kill -TERM" in remote_script(stop)
    _, (describe, ssh), _ = dry_run(capsys, "status", *FLAGS)
    assert describe[3:5] == ["queued-resources", "describe"] and "--worker=all" in ssh
    for command in (logs, stop, ssh):
        _bash_syntax_ok(remote_script(command))


def test_up_dry_run_runs_create_setup_train_in_order(capsys):
    code, commands, _ = dry_run(capsys, "up", *FLAGS, "--accelerator-type=v5p-128",
                                "--bucket=bkt", "--config.seed=3")
    assert code == 0
    verbs = [c[3:5] for c in commands]
    assert verbs == [["queued-resources", "create"], ["queued-resources", "describe"],
                     ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]
    assert "--config.seed=3" in remote_script(commands[-1])


def test_up_validates_workdir_before_creating(capsys):
    code, commands, err = dry_run(capsys, "up", *FLAGS, "--accelerator-type=v5p-128")
    assert code == 2 and not commands and "RT2_BUCKET" in err


def _fake_gcloud(tmp_path, fail_on=None):
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        'case "$*" in *describe*) echo ACTIVE;; esac\n'
        + (f'case "$*" in *{fail_on}*) exit 7;; esac\n' if fail_on else "")
        + "exit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake.parent, log


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_real_run_echoes_and_stops_at_first_failure(tmp_path):
    bin_dir, log = _fake_gcloud(tmp_path, fail_on="scp")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RT2_TPU_PROJECT": "p", "RT2_TPU_ZONE": "z", "RT2_TPU_NAME": "n",
           "RT2_TPU_TYPE": "v5p-8", "RT2_BUCKET": "b", "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(TPU_PY), "up", "--poll-seconds=1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert "+ gcloud compute tpus queued-resources create n" in proc.stdout
    assert "n: ACTIVE" in proc.stdout
    assert "exit code 7" in proc.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[2:4] for c in calls] == [["queued-resources", "create"],
                                               ["queued-resources", "describe"],
                                               ["tpu-vm", "scp"]]  # no ssh after the failure


def test_pack_tree_skips_ignored_files(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("x = 1\n")
    (src / ".venv").mkdir()
    (src / ".venv" / "big").write_text("junk")
    tarball = tmp_path / "out.tar.gz"
    tpu.pack_tree(src, tarball)
    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["pkg/a.py"]


def _bash_syntax_ok(script):
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", "-c", script], check=True)
