#!/usr/bin/env python3
"""bench/bench.py: kolm vs llama.cpp, same GGUF, same thread count, same machine,
measured the same way over HTTP (OpenAI chat completions, SSE).

The two servers run one after the other (never at once, so they do not compete for
cores): `kolm serve MODEL --workers 1 --threads T`, then llama-cpp-python's server
(`python -m llama_cpp.server --model MODEL --n_threads T --chat_format gemma`).

Metrics (medians over --reps runs where repeated):
  decode tok/s     one stream, (tokens - 1) / (last token time - first token time)
  prompt tok/s     usage.prompt_tokens / latency of a max_tokens=1 request with a long
                   prompt (a random prefix defeats prefix caches)
  TTFB ms          request sent -> first SSE event;  TTFT ms: -> first content token
  agg tok/s @N     N concurrent streams of --agg-tokens tokens each: tokens / wall time
  agg tok/s @N +logprobs  the same with logprobs and top_logprobs=5
  agg tok/s @N +json_schema  the same with a strict json_schema response_format
                   (grammar-constrained decoding on every stream; one untimed request
                   first compiles the grammar)
  request ms (max_tokens=1)  a short non-streamed request for one token, end to end
  stream us/token  (streamed time - non-streamed time) / tokens for the same greedy
                   generation of --decode-tokens tokens: what each SSE chunk costs,
                   server and this Python client together
  gateway CPU us/token, us/request  kolm only: CPU time of the gateway process
                   (/proc/PID/task/*/schedstat, ns) per streamed token of long streams
                   and per max_tokens=1 request, and per token of the N-stream runs; the
                   worker's model time is not in it, the kernel's socket work is
  relay floor us/token  kolm only: bench/relay_floor.c's CPU per event for the same
                   syscalls per token (epoll_wait, a read from a unix socket, a writev
                   to loopback TCP) with nothing else, paced at the measured decode
                   interval: what gateway CPU us/token can approach, not go below
Token counts come from usage when the server sends it (stream_options.include_usage),
otherwise from the number of content deltas (labelled in the output).

Standard library only (plus the llama_cpp package for the llama.cpp side).
Usage: bench/run.sh [--quick] [--skip-llama] [--json out.json]
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
    "What is 12 times 7?", "Tell me a short story about a robot.",
    "Who wrote Romeo and Juliet?", "Describe the city of Paris.",
    "Name the planets of the solar system.", "Why is the ocean salty?",
]
LONG_TEXT = ("The history of the printing press begins in the fifteenth century, when "
             "movable type changed how knowledge spread across Europe. Printers set lines of "
             "metal letters by hand, inked them, and pressed paper against the type. ")


# Structured output for the "+json_schema" row: every stream constrained by a grammar.
ANSWER_SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["answer", "confidence"],
    "properties": {"answer": {"type": "string", "maxLength": 400},
                   "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, argv, port, env=None, log_dir=None):
        self.name, self.argv, self.port = name, argv, port
        self.log = open(Path(log_dir) / f"{name}.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.model = None

    def wait_ready(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log.name}")
            try:
                # kolm answers /health 200 once a worker is ready (503 before);
                # a server without /health (404) is ready when it answers at all.
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                if r.status not in (200, 404):
                    c.close()
                    time.sleep(0.2)
                    continue
                c.request("GET", "/v1/models")
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status == 200:
                    self.model = json.loads(body)["data"][0]["id"]
                    return
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout}s; see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()


def chat(port, model, prompt, max_tokens, stream, timeout=600, extra=None):
    """One chat completion. Returns a dict of timings (seconds, monotonic) and counts."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream, **(extra or {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", body=data,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = {"t0": t0, "status": r.status, "first_event": None, "first_token": None,
           "last_token": None, "deltas": 0, "usage": None}
    if r.status != 200:
        out["error"] = r.read()[:300]
        c.close()
        return out
    if not stream:
        j = json.loads(r.read())
        out["end"] = time.monotonic()
        out["usage"] = j.get("usage")
        c.close()
        return out
    buf = b""
    done = False
    while not done:
        d = r.read1(65536)
        if not d:
            break
        buf += d
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            now = time.monotonic()
            for line in ev.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if out["first_event"] is None:
                    out["first_event"] = now
                if payload == b"[DONE]":
                    done = True
                    break
                j = json.loads(payload)
                if j.get("usage"):
                    out["usage"] = j["usage"]
                for ch in j.get("choices") or []:
                    if (ch.get("delta") or {}).get("content"):
                        out["deltas"] += 1
                        if out["first_token"] is None:
                            out["first_token"] = now
                        out["last_token"] = now
    out["end"] = time.monotonic()
    c.close()
    return out


def cpu_ns(pid):
    """CPU time of every thread of pid, in ns (schedstat's first field)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def relay_floor(args, gap_us, events, log):
    """bench/relay_floor's CPU us per event at gap_us (built next to kolm), or None."""
    exe = Path(args.kolm_bin).parent / "relay_floor"
    r = subprocess.run([str(exe), "-g", str(int(gap_us)), "-n", str(events)],
                       capture_output=True, text=True, timeout=60 + events * gap_us / 1e6 * 2)
    kv = dict(f.split("=", 1) for f in r.stdout.split()[1:] if "=" in f)
    if r.returncode or "cpu_us_per_event" not in kv:
        log(f"relay floor failed: {r.stderr.strip() or r.stdout.strip()}")
        return None
    return float(kv["cpu_us_per_event"])


def n_completion(res):
    u = res.get("usage") or {}
    return (u["completion_tokens"], "usage") if u.get("completion_tokens") else (res["deltas"], "deltas")


def measure(srv, args, log):
    port, model = srv.port, srv.model
    res = {}
    chat(port, model, "Hello!", 4, True)  # warm-up

    rates, how = [], None
    for i in range(args.reps):
        r = chat(port, model, PROMPTS[i % len(PROMPTS)], args.decode_tokens, True)
        n, how = n_completion(r)
        if r["status"] == 200 and n > 1 and r["last_token"] > r["first_token"]:
            rates.append((n - 1) / (r["last_token"] - r["first_token"]))
    res["decode tok/s"] = (statistics.median(rates) if rates else None, how)
    log(f"{srv.name}: decode {res['decode tok/s']}")

    rates = []
    for i in range(args.reps):
        nonce = f"[{random.randrange(1 << 60):x}] "
        text = nonce + LONG_TEXT * args.prompt_repeat + "Summarize."
        r = chat(port, model, text, 1, False)
        u = r.get("usage") or {}
        if r["status"] == 200 and u.get("prompt_tokens"):
            rates.append(u["prompt_tokens"] / (r["end"] - r["t0"]))
            res["prompt tokens"] = (u["prompt_tokens"], "usage")
    res["prompt tok/s"] = (statistics.median(rates) if rates else None, "usage")
    log(f"{srv.name}: prompt {res['prompt tok/s']}")

    # The gateway + proto + worker round trip with no model step: max_tokens past
    # the context window is refused by the worker right after tokenizing "Hi".
    rtt = []
    for _ in range(20 if srv.name == "kolm" else 0):
        r = chat(port, model, "Hi", 10 ** 6, False)
        if r["status"] == 400:
            rtt.append((time.monotonic() - r["t0"]) * 1000)
    res["round trip ms (no model step)"] = (statistics.median(rtt) if rtt else None, "")
    log(f"{srv.name}: round trip {res['round trip ms (no model step)']}")

    ttfb, ttft = [], []
    for i in range(args.reps + 2):
        r = chat(port, model, PROMPTS[i % len(PROMPTS)], 4, True)
        if r["first_event"]:
            ttfb.append((r["first_event"] - r["t0"]) * 1000)
        if r["first_token"]:
            ttft.append((r["first_token"] - r["t0"]) * 1000)
    res["TTFB ms"] = (statistics.median(ttfb) if ttfb else None, "")
    res["TTFT ms"] = (statistics.median(ttft) if ttft else None, "")
    log(f"{srv.name}: ttfb {res['TTFB ms']} ttft {res['TTFT ms']}")

    one_tok = []
    for i in range(args.reps * 4):
        r = chat(port, model, PROMPTS[i % len(PROMPTS)], 1, False)
        if r["status"] == 200:
            one_tok.append((r["end"] - r["t0"]) * 1000)
    res["request ms (max_tokens=1)"] = (statistics.median(one_tok) if one_tok else None, "")
    log(f"{srv.name}: max_tokens=1 {res['request ms (max_tokens=1)']}")

    per_tok = []
    for i in range(args.reps):
        p = PROMPTS[i % len(PROMPTS)]
        a = chat(port, model, p, args.decode_tokens, False)
        b = chat(port, model, p, args.decode_tokens, True)
        n, _ = n_completion(a)
        if a["status"] == b["status"] == 200 and n:
            per_tok.append(((b["end"] - b["t0"]) - (a["end"] - a["t0"])) / n * 1e6)
    res["stream us/token"] = (statistics.median(per_tok) if per_tok else None, "")
    log(f"{srv.name}: stream us/token {res['stream us/token']}")

    if srv.name == "kolm":
        gw = srv.proc.pid
        c0, toks = cpu_ns(gw), 0
        for i in range(args.reps):
            r = chat(port, model, PROMPTS[i % len(PROMPTS)], args.decode_tokens * 2, True)
            toks += n_completion(r)[0] if r["status"] == 200 else 0
        res["gateway CPU us/token"] = ((cpu_ns(gw) - c0) / 1e3 / toks if toks else None, "")
        rate = res["decode tok/s"][0]
        if rate:  # the same syscalls at the same pace, with no gateway around them
            gap = 1e6 / rate
            res["relay floor us/token"] = (relay_floor(args, gap, args.decode_tokens * 2, log),
                                           f"gap {gap:.0f} us")
        c0, k = cpu_ns(gw), args.reps * 8
        for i in range(k):
            chat(port, model, PROMPTS[i % len(PROMPTS)], 1, False)
        res["gateway CPU us/request"] = ((cpu_ns(gw) - c0) / 1e3 / k, "")
        log(f"{srv.name}: gateway CPU {res['gateway CPU us/token']} us/token "
            f"(relay floor {res.get('relay floor us/token')}), "
            f"{res['gateway CPU us/request']} us/request")

    for n, extra in [(c, None) for c in args.concurrency] + [
            (args.concurrency[-1], {"logprobs": True, "top_logprobs": 5}),
            (args.concurrency[-1], {"response_format": ANSWER_SCHEMA})]:
        results = [None] * n
        barrier = threading.Barrier(n)

        def one(i):
            barrier.wait()
            results[i] = chat(port, model, PROMPTS[i % len(PROMPTS)], args.agg_tokens, True, extra=extra)

        if extra and "response_format" in extra:  # compile the grammar outside the timing, as plain runs warm up
            chat(port, model, PROMPTS[0], args.agg_tokens, True, extra=extra)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        c0 = cpu_ns(srv.proc.pid) if srv.name == "kolm" else None
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        ok = [r for r in results if r and r["status"] == 200]
        total = sum(n_completion(r)[0] for r in ok)
        how = n_completion(ok[0])[1] if ok else ""
        key = f"agg tok/s @{n}" + ("" if not extra else " +logprobs" if "logprobs" in extra else " +json_schema")
        res[key] = (total / wall if ok else None, how + ("" if len(ok) == n else f", {n - len(ok)} failed"))
        log(f"{srv.name}: {key} {res[key]}")
        if c0 is not None and not extra and total:
            res[f"gateway CPU us/token @{n}"] = ((cpu_ns(srv.proc.pid) - c0) / 1e3 / total, "")
    return res


def fmt(v):
    if isinstance(v, int):
        return str(v)
    return "n/a" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def table(results, args):
    names = list(results)
    keys = []
    for r in results.values():
        keys += [k for k in r if k not in keys]
    head = ["metric"] + names + (["kolm/llama.cpp"] if len(names) == 2 else [])
    rows = []
    for k in keys:
        row = [k]
        vals = []
        for n in names:
            v, how = results[n].get(k, (None, ""))
            vals.append(v)
            row.append(fmt(v) + (f" ({how})" if how and how != "usage" else ""))
        if len(names) == 2:
            row.append(f"{vals[0] / vals[1]:.2f}" if vals[0] and vals[1] else "n/a")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kolm-bin", default=str(REPO / "build" / "bin" / "kolm"))
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("KOLM_HOME", os.path.expanduser("~/.kolm")), "models",
        "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KOLM_BENCH_THREADS", "2")))
    ap.add_argument("--python", default=sys.executable, help="python with llama_cpp[server]")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-repeat", type=int, default=12, help="~45 tokens per repeat")
    ap.add_argument("--agg-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-kolm", action="store_true")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.decode_tokens, args.agg_tokens, args.prompt_repeat = 1, 48, 24, 4

    def log(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    if not Path(args.model).is_file():
        sys.exit(f"model {args.model} not found (deploy/setup.sh assembles it)")
    logdir = args.logdir = tempfile.mkdtemp(prefix="kolm-bench-")
    home = os.path.join(logdir, "home")
    os.makedirs(home)
    specs = []
    if not args.skip_kolm:
        specs.append(("kolm", lambda p: [args.kolm_bin, "serve", args.model, "--port", str(p),
                                         "--workers", "1", "--threads", str(args.threads),
                                         "--allow-unsigned"]))
    if not args.skip_llama:
        specs.append(("llama.cpp", lambda p: [
            args.python, "-m", "llama_cpp.server", "--model", args.model, "--host", "127.0.0.1",
            "--port", str(p), "--n_threads", str(args.threads), "--n_threads_batch",
            str(args.threads), "--n_ctx", str(args.n_ctx), "--chat_format", "gemma"]))

    results = {}
    for name, argv in specs:
        port = free_port()
        log(f"starting {name} on {port} (logs in {logdir})")
        srv = Server(name, argv(port), port, env=dict(os.environ, KOLM_HOME=home), log_dir=logdir)
        try:
            srv.wait_ready()
            results[name] = measure(srv, args, log)
        except Exception as e:  # noqa: BLE001 - report and go on with the other server
            log(f"{name} failed: {e}")
            results[name] = {}
        finally:
            srv.stop()

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nmodel {os.path.basename(args.model)}, {args.threads} threads, {os.cpu_count()} cores "
          f"({cpu}), reps {args.reps}, decode {args.decode_tokens} tok, "
          f"concurrent streams of {args.agg_tokens} tok\n")
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
