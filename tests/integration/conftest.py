"""Integration-test fixtures: the real `kolm serve` (gateway + real workers) as a
subprocess on a free port.

Every fixture here is opt-in (nothing is autouse), and this file imports only the
standard library and pytest, so test modules that do not need a server (e.g. the
tokenizer and model oracles) are unaffected.

Environment:
  KOLM_BUILD        build directory holding bin/kolm (default <repo>/build)
  KOLM_TEST_MODEL   GGUF to serve (default ${KOLM_HOME:-~/.kolm}/models/gemma-3-270m-q4_k_m.gguf)
  KOLM_HOME         parent of the per-server state directories (default: pytest's tmp)
  KOLM_TEST_START_TIMEOUT  seconds to wait for /health (default 120)

Fixtures:
  kolm_bin, kolm_model      paths (fail, never skip, when missing)
  kolm_server               a module-wide server, checked alive before each test
  kolm_server_factory       start(extra_args=..., workers=..., threads=...) -> KolmServer,
                            for tests that kill or stop processes; torn down after the test
  openai_client, model_id   an official `openai` client (max_retries=0) on kolm_server
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"

_ACTIVE = []  # KolmServer objects started and not yet stopped (for failure logs)


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_children(pid):
    """Pids whose parent is pid, by scanning /proc (no psutil)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(d))
    return sorted(kids)


def proc_state(pid):
    """The one-letter state of pid ('R', 'S', 'Z', ...) or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("latin-1")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class KolmServer:
    """One `kolm serve` subprocess with its own port, KOLM_HOME and log file."""

    def __init__(self, binary, model, workdir, extra_args=(), workers=1, threads=2):
        self.binary = Path(binary)
        self.model = Path(model)
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args)
        self.workers = workers
        self.threads = threads
        self.port = None
        self.proc = None
        self.log_path = self.workdir / "serve.log"
        self.home = self.workdir / "home"
        self._model_id = None

    # --- lifecycle -------------------------------------------------------------
    def start(self, timeout=None):
        timeout = timeout or float(os.environ.get("KOLM_TEST_START_TIMEOUT", "120"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.argv = [str(self.binary), "serve", str(self.model), "--port", str(self.port),
                     *(["--workers", str(self.workers)] if self.workers else []),
                     "--threads", str(self.threads), *self.extra_args]
        if self.model.suffix != ".kolm":  # a raw GGUF has no signature to check
            self.argv.append("--allow-unsigned")
        env = dict(os.environ, KOLM_HOME=str(self.home))
        self._log = open(self.log_path, "ab")
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        # Own session: teardown can kill the whole group (gateway and workers).
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _ACTIVE.append(self)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"kolm serve exited with status {self.proc.returncode} during "
                            f"startup\n{self.log_tail()}", pytrace=False)
            try:
                status, _, _ = self.request("GET", "/health", timeout=2)
                if status == 200:
                    return self
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"kolm serve: /health not 200 within {timeout:.0f}s (last: {last})\n"
                    f"{self.log_tail()}", pytrace=False)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace=10.0):
        """SIGTERM, then SIGKILL after grace seconds; also kills leftover workers."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers in the session, if any
        except (ProcessLookupError, PermissionError):
            pass
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if not self._log.closed:
            self._log.close()

    # --- inspection ----------------------------------------------------------------
    def log_tail(self, limit=12000):
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        text = data[-limit:].decode("utf-8", "replace")
        return f"--- {self.log_path} (last {min(limit, len(data))} bytes) ---\n{text}"

    def worker_pids(self):
        """Worker processes: children of the gateway (those named like a worker
        when any are, else all children)."""
        kids = [p for p in proc_children(self.proc.pid) if proc_state(p) not in (None, "Z")]
        named = [p for p in kids if "worker" in proc_cmdline(p)]
        return named or kids

    def zombie_children(self):
        return [p for p in proc_children(self.proc.pid) if proc_state(p) == "Z"]

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_id(self):
        """The first id listed by GET /v1/models."""
        if self._model_id is None:
            status, _, body = self.request("GET", "/v1/models")
            assert status == 200, f"GET /v1/models -> {status}: {body[:500]!r}"
            data = json.loads(body)["data"]
            assert data, "GET /v1/models lists no model"
            self._model_id = data[0]["id"]
        return self._model_id

    # --- HTTP ------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=120):
        """One HTTP/1.1 request on a fresh connection -> (status, headers dict with
        lower-case names, body bytes). body may be bytes, str, or a JSON-able object."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def chat(self, content, max_tokens=8, **kw):
        """A raw non-streaming chat completion -> (status, parsed JSON or raw bytes)."""
        req = {"model": self.model_id, "messages": [{"role": "user", "content": content}],
               "max_tokens": max_tokens, "temperature": 0, **kw}
        status, _, body = self.request("POST", "/v1/chat/completions", req)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def assert_serving(self):
        """The gateway is up, /health is 200 and a one-token completion works."""
        assert self.alive(), f"kolm serve died (status {self.proc.returncode})\n{self.log_tail()}"
        status, _, body = self.request("GET", "/health", timeout=10)
        assert status == 200, f"/health -> {status} {body[:300]!r}"
        status, j = self.chat("Say hi.", max_tokens=1)
        assert status == 200, f"chat after the test -> {status}: {j!r}"
        assert j["choices"][0]["message"]["role"] == "assistant"


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def kolm_bin():
    build = Path(os.environ.get("KOLM_BUILD", REPO / "build"))
    if not build.is_absolute():
        build = REPO / build
    binary = build / "bin" / "kolm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} not found: build first (deploy/setup.sh) or set KOLM_BUILD",
                    pytrace=False)
    return binary


@pytest.fixture(scope="session")
def kolm_model():
    env = os.environ.get("KOLM_TEST_MODEL")
    if env:
        path = Path(env)
    else:
        path = Path(os.environ.get("KOLM_HOME", Path.home() / ".kolm")) / "models" / MODEL_NAME
    if not path.is_file():
        pytest.fail(f"test model {path} not found: run deploy/setup.sh or set KOLM_TEST_MODEL",
                    pytrace=False)
    return path


def _workroot(tmp_path_factory, name):
    base = os.environ.get("KOLM_HOME")
    if base:
        root = Path(base) / "servers"
        root.mkdir(parents=True, exist_ok=True)
        n = 0
        while (root / f"{name}-{n}").exists():
            n += 1
        return root / f"{name}-{n}"
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module")
def _kolm_server_module(request, kolm_bin, kolm_model, tmp_path_factory):
    name = request.module.__name__.rsplit(".", 1)[-1]
    srv = KolmServer(kolm_bin, kolm_model, _workroot(tmp_path_factory, name))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def kolm_server(_kolm_server_module):
    srv = _kolm_server_module
    if not srv.alive():
        pytest.fail(f"kolm serve is not running (exit status {srv.proc.returncode}); an "
                    f"earlier test crashed it\n{srv.log_tail()}", pytrace=False)
    return srv


@pytest.fixture
def kolm_server_factory(kolm_bin, kolm_model, tmp_path_factory):
    started = []

    def start(extra_args=(), workers=1, threads=2):
        srv = KolmServer(kolm_bin, kolm_model, _workroot(tmp_path_factory, "srv"),
                         extra_args, workers, threads)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


def make_client(srv, timeout=120.0):
    import openai  # imported here: modules that need no server need no openai
    return openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=timeout)


@pytest.fixture(scope="module")
def _openai_client_module(_kolm_server_module):
    return make_client(_kolm_server_module)


@pytest.fixture
def openai_client(kolm_server, _openai_client_module):
    return _openai_client_module


@pytest.fixture
def model_id(kolm_server):
    return kolm_server.model_id


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log tail of every running server to a failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _ACTIVE:
        for srv in list(_ACTIVE):
            rep.sections.append((f"kolm serve log (port {srv.port})", srv.log_tail()))
