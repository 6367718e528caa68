"""Ahead-of-time fit check on a described TPU topology (needs libtpu; runs on a CPU host)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="the fit check needs libtpu's topology descriptions")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = [sys.executable, "-m", "rt2_jax.tools.aot", "--config=configs/tiny.py",
        "--topology=v5e:2x2"]


def _start(*args, tool=TOOL):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([*tool, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def runs():
    """The compiles at once (each is mostly single-threaded XLA work)."""
    decoder_only = [sys.executable, "-m", "rt2_jax.tools.aot",
                    "--config=configs/tiny_decoder.py", "--topology=v5e:2x2"]
    procs = {"fits": _start("--json"),
             "tiny_hbm": _start("--json", "--hbm_gib=0.001", "--count_flops=false"),
             "decoder_only": _start("--json", "--count_flops=false", tool=decoder_only)}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        out[name] = (proc.returncode, stdout, stderr)
    return out


def test_tiny_compiles_and_reports(runs):
    rc, stdout, stderr = runs["fits"]
    assert rc == 0, stderr[-3000:]
    report = json.loads(stdout)
    for key in ("command", "topology", "devices", "params", "bytes_per_device",
                "hbm_bytes_per_device", "fits", "flops_per_step", "compile_s"):
        assert key in report, key
    assert report["topology"] == "v5e:2x2" and report["devices"] == 4
    assert report["fits"] is True
    assert report["bytes_per_device"] > 0 and report["temp_bytes"] >= 0
    assert report["hbm_bytes_per_device"] == 16 * 1024**3
    assert report["params"] > 100_000
    # Unrolled XLA FLOPs agree with the 6 * params * tokens estimate within a small factor.
    assert 0.5 < report["flops_vs_analytic"] < 2.0
    assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}


def test_decoder_only_backbone_compiles_for_a_topology(runs):
    rc, stdout, stderr = runs["decoder_only"]
    assert rc == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["fits"] is True and report["config_name"] == "tiny_decoder"
    assert report["params"] == 293_056 and report["analytic_flops_per_step"] > 0


def test_impossible_budget_is_reported_not_crashed(runs):
    rc, stdout, stderr = runs["tiny_hbm"]
    assert rc == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "does not fit" in stderr
    report = json.loads(stdout)
    assert report["fits"] is False
    assert report["headroom_bytes"] < 0
    assert report["bytes_per_device"] > report["hbm_bytes_per_device"]


def test_mesh_that_does_not_divide_the_topology_is_a_clear_error():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([*TOOL, "--config.mesh.model=3"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "config.mesh" in proc.stderr


def test_cpu_commands_stay_quiet_with_libtpu_installed():
    """The `tpu` extra (libtpu, for these compiles) must not change what a CPU user sees: no
    libtpu initialization errors about TPU hostnames when JAX_PLATFORMS is unset."""
    import rt2_jax

    if rt2_jax._machine_has_accelerator():
        pytest.skip("this machine has an accelerator; JAX may use it")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", "import rt2_jax, jax; print(jax.devices())"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CpuDevice" in out.stdout
    assert "TPU" not in out.stderr, out.stderr[-2000:]
