"""`kolm serve` on a model it cannot use fails at once with a clear message instead of
respawning workers forever: a missing file, a truncated GGUF, a file that is not GGUF."""

import subprocess

import pytest

from conftest import free_port


def serve(kolm_bin, path):
    return subprocess.run([str(kolm_bin), "serve", str(path), "--port", str(free_port()),
                           "--allow-unsigned"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_missing_model_file(kolm_bin, tmp_path):
    r = serve(kolm_bin, tmp_path / "nope.gguf")
    assert r.returncode != 0
    assert "nope.gguf" in r.stderr and "not found" in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["truncated", "not-gguf", "bad-version"])
def test_corrupt_model_exits_with_the_reason(kolm_bin, kolm_model, tmp_path, kind):
    data = open(kolm_model, "rb").read(1 << 20)
    if kind == "not-gguf":
        data = b"PK\x03\x04" + data[4:]
    elif kind == "bad-version":
        data = data[:4] + (99).to_bytes(4, "little") + data[8:]
    path = tmp_path / f"{kind}.gguf"
    path.write_bytes(data)
    r = serve(kolm_bin, path)
    assert r.returncode == 1, r.stderr
    assert "cannot open model" in r.stderr, r.stderr
    assert "could not load" in r.stderr, r.stderr


def test_devices_list_spawns_one_worker_each(kolm_bin, kolm_model, tmp_path):
    from conftest import KolmServer
    srv = KolmServer(kolm_bin, kolm_model, tmp_path, extra_args=["--devices", "cpu,cpu"], workers=2,
                     threads=1)
    srv.start()
    try:
        assert len(srv.worker_pids()) == 2, srv.worker_pids()
        cmdlines = open(f"/proc/{srv.worker_pids()[0]}/cmdline", "rb").read().split(b"\0")
        assert b"--device" in cmdlines and cmdlines[cmdlines.index(b"--device") + 1] == b"cpu"
        srv.assert_serving()
    finally:
        srv.stop()


def test_missing_gpu_fails_with_the_reason(kolm_bin, kolm_model):
    # No GPU here (or a build without CUDA): the worker says which, and serve exits.
    r = subprocess.run([str(kolm_bin), "serve", str(kolm_model), "--port", str(free_port()),
                        "--allow-unsigned", "--devices", "7"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    assert "--device cuda:7" in r.stderr, r.stderr
    assert "no such CUDA device" in r.stderr or "built without CUDA" in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["--devices", "gpu0"], ["--devices", ""], ["--devices", "0,,1"],
                                  ["--devices", "0", "--workers", "2"]])
def test_bad_devices_refused(kolm_bin, kolm_model, args):
    r = subprocess.run([str(kolm_bin), "serve", str(kolm_model), "--port", str(free_port()),
                        "--allow-unsigned", *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert "--devices" in r.stderr, r.stderr


def test_default_devices_follow_the_visible_gpus(kolm_bin, kolm_model, tmp_path):
    # kolm serve without --devices or --workers asks `kolm-worker --devices` how many
    # GPUs it can use and spawns one worker per GPU; with none, one CPU worker.
    r = subprocess.run([str(kolm_bin.parent / "kolm-worker"), "--devices"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip().isdigit(), (r.returncode, r.stdout, r.stderr)
    gpus = int(r.stdout)
    from conftest import KolmServer
    srv = KolmServer(kolm_bin, kolm_model, tmp_path, workers=None)
    srv.start()
    try:
        pids = srv.worker_pids()
        assert len(pids) == max(gpus, 1), pids
        cmdline = open(f"/proc/{pids[0]}/cmdline", "rb").read().split(b"\0")
        want = b"cuda:0" if gpus else None
        got = cmdline[cmdline.index(b"--device") + 1] if b"--device" in cmdline else None
        assert got == want, cmdline
        srv.assert_serving()
    finally:
        srv.stop()


@pytest.mark.parametrize("args,why", [(["--gpu-memory-fraction", "0.5", "--devices", "cpu"], "runs none"),
                                      (["--gpu-memory-fraction", "0.5", "--workers", "1"], "runs none"),
                                      (["--gpu-memory-fraction", "1.5", "--devices", "0"], "bad value"),
                                      (["--gpu-memory-fraction", "x", "--devices", "0"], "bad value")])
def test_gpu_memory_fraction_needs_a_gpu_worker(kolm_bin, kolm_model, args, why):
    r = subprocess.run([str(kolm_bin), "serve", str(kolm_model), "--port", str(free_port()),
                        "--allow-unsigned", *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert "--gpu-memory-fraction" in r.stderr and why in r.stderr, r.stderr


def test_worker_refuses_gpu_memory_fraction_on_cpu(kolm_bin, kolm_model):
    r = subprocess.run([str(kolm_bin.parent / "kolm-worker"), "--model", str(kolm_model), "--device", "cpu",
                        "--gpu-memory-fraction", "0.5", "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stderr
    assert "sizes a GPU worker's KV cache" in r.stderr, r.stderr
