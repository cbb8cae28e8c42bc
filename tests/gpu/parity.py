#!/usr/bin/env python3
"""tests/gpu/parity.py: end-to-end greedy parity of two kolm-worker processes.

Spawns two workers on the same GGUF the way the gateway does (gateway/gw_pool.c
spawn(): a socketpair, the child's end at fd 3, `--fd 3 --model ... --device ...
--kv-dtype ...`), speaks proto/ frames to them (version 4), and sends each the
same requests one at a time (greedy by default; --temperature, --top-p, --top-k,
--min-p and --seed make them seeded samples, drawn on each worker's backend from
the same generator), chat prompts and legacy raw prompts, logprobs with the top 2
alternatives. The token sequences (the `lp`
token strings of the DELTAs; the protocol carries no token ids), the texts and the
finish reasons are compared per prompt.

Agreement is the fraction of generated tokens before each prompt's first
difference: sum(common prefix) / sum(longer length). With --no-logprobs the
requests ask for none (the tokens are picked by the backend's sample op either
way; no logits leave the GPU) and the texts are compared character by
character instead. The run fails (exit 1) below
--min-agree, or when the chosen tokens' logprobs over the common prefixes differ
by more than --max-dlogprob (when given), and on any worker error, death or
timeout (exit 2).

  parity.py --model M.gguf --worker build-gpu-bundle/bin/kolm-worker --a cpu --b cuda:0
  parity.py --model M.gguf --a cuda:0 --a-kv fp8 --b cuda:0 --b-kv f16 --min-agree 0.9

Needs Python 3 with numpy and msgpack only (stdlib otherwise).
"""
import argparse
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np

MAGIC, VERSION, HDR = 0x4B4C4D46, 4, struct.Struct(">IHHI")
HELLO, SUBMIT, EVENT, SHUTDOWN = 1, 2, 4, 7
ACCEPTED, DELTA, FINISH, ERROR = 1, 2, 3, 4
FINISH_NAMES = {1: "stop", 2: "length", 3: "cancelled", 4: "tool_calls"}


def user(text):
    return [{"role": "user", "content": text}]


# (kind, payload): "chat" takes a message list, "raw" a legacy completion prompt.
PROMPTS = [
    ("chat", user("What is the capital of France?")),
    ("chat", user("Write a haiku about the sea.")),
    ("chat", user("List three prime numbers.")),
    ("chat", user("Explain what a CPU does in one sentence.")),
    ("chat", user("Translate 'good morning' into Spanish.")),
    ("chat", user("What is 17 times 23?")),
    ("chat", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why is the sky blue?"}]),
    ("chat", [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
              {"role": "user", "content": "Another one, and say why you like it."}]),
    ("raw", "The quick brown fox"),
    ("raw", "def fibonacci(n):\n"),
]


class WorkerError(Exception):
    pass


class Worker:
    """One kolm-worker on one end of a socketpair. stderr goes to log_path."""

    def __init__(self, label, exe, model, device, kv, opts, log_dir, extra=()):
        self.label, self.device, self.kv = label, device, kv
        self.log_path = os.path.join(log_dir, f"worker-{label}.log")
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [exe, "--fd", "3", "--model", model, "--model-id", "parity", "--worker-id", "ab".index(label),
                "--device", device, "--kv-dtype", kv, "--threads", opts.threads, "--ctx", opts.ctx,
                "--kv-mib", opts.kv_mib, *extra]
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # dup2 clears close-on-exec on fd 3, also when child already is fd 3.
        acts = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2), (os.POSIX_SPAWN_DUP2, child.fileno(), 3)]
        try:
            self.pid = os.posix_spawn(exe, [str(a) for a in argv], os.environ, file_actions=acts)
        finally:
            os.close(log)
            child.close()
        self.status, self.buf, self.timeout = None, b"", opts.timeout

    def _reap(self, wait_s=0.0):
        end = time.time() + wait_s
        while self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
            elif time.time() >= end:
                break
            else:
                time.sleep(0.05)
        return self.status

    def fail(self, what):
        st = self._reap(2.0)
        how = "still running" if st is None else f"exit status {st}" if st >= 0 else f"signal {-st}"
        with open(self.log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-8:]).rstrip()
        raise WorkerError(f"worker {self.label} ({self.device}, kv {self.kv}): {what} ({how}); "
                          f"its log {self.log_path} ends:\n{tail}")

    def send(self, ftype, obj):
        body = msgpack.packb(obj, use_bin_type=True)
        try:
            self.sock.sendall(HDR.pack(MAGIC, VERSION, ftype, len(body)) + body)
        except OSError as e:
            self.fail(f"cannot write to it: {e}")

    def recv(self):
        """The next frame as (type, map)."""
        while True:
            if len(self.buf) >= HDR.size:
                magic, ver, ftype, n = HDR.unpack_from(self.buf)
                if magic != MAGIC or ver != VERSION:
                    self.fail(f"bad frame header (magic {magic:#x}, version {ver}; expected version {VERSION})")
                if len(self.buf) >= HDR.size + n:
                    body, self.buf = self.buf[HDR.size:HDR.size + n], self.buf[HDR.size + n:]
                    # Token strings are token bytes, not always whole UTF-8 characters.
                    return ftype, msgpack.unpackb(body, raw=False, unicode_errors="surrogateescape")
            self.sock.settimeout(self.timeout)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                self.fail(f"no frame for {self.timeout} s")
            except OSError as e:
                self.fail(f"read failed: {e}")
            if not data:
                self.fail("it closed the socket")
            self.buf += data

    def hello(self):
        while True:
            ftype, m = self.recv()
            if ftype == HELLO:
                return m

    def generate(self, job, kind, payload, max_tokens, logprobs, sampling):
        """One request (sampling: temp, top_p, top_k, min_p, seed): dict(toks, lps, tops, text,
        finish), or raises WorkerError. Without logprobs the "tokens" are the text's characters."""
        req = {"job": job, "msgs": payload if kind == "chat" else [], "n": 1, "max_tokens": max_tokens,
               "temp": sampling["temp"], "top_p": sampling["top_p"], "top_k": sampling["top_k"],
               "min_p": sampling["min_p"], "pres": 0.0, "freq": 0.0, "lp": int(logprobs),
               "top_lp": 2 if logprobs else 0, "echo": 0}
        if sampling["seed"] is not None:
            req["seed"] = sampling["seed"] + job
        if kind == "raw":
            req["prompts"] = [payload]
        self.send(SUBMIT, req)
        out = {"toks": [], "lps": [], "tops": [], "text": "", "finish": None}
        while True:
            ftype, ev = self.recv()
            if ftype != EVENT or ev.get("job") != job:
                continue
            k = ev["kind"]
            if k == DELTA:
                out["text"] += ev.get("text", "")
                for tok, lp, top in ev.get("lp", []):
                    out["toks"].append(tok)
                    out["lps"].append(lp)
                    out["tops"].append([t[1] for t in top])
            elif k == ERROR:
                raise WorkerError(f"worker {self.label} ({self.device}): job {job}: {ev.get('status')} "
                                  f"{ev.get('code')}: {ev.get('msg')}")
            elif k == FINISH:
                out["finish"] = FINISH_NAMES.get(ev.get("finish"), ev.get("finish"))
                if ev.get("last"):
                    if not logprobs:
                        out["toks"] = list(out["text"])
                        out["lps"] = [0.0] * len(out["toks"])
                        out["tops"] = [[] for _ in out["toks"]]
                    return out

    def close(self):
        if self.status is None:
            try:
                self.sock.sendall(HDR.pack(MAGIC, VERSION, SHUTDOWN, 1) + msgpack.packb({}))
            except OSError:
                pass
            if self._reap(10.0) is None:
                os.kill(self.pid, signal.SIGKILL)
                self._reap(5.0)
        self.sock.close()


def drive(w, opts, results, errors, abort):
    """Thread body: HELLO, then every prompt in order; stops early when the other side failed."""
    try:
        h = w.hello()
        print(f"worker {w.label}: {w.device}, kv {w.kv}, {h.get('arch')}, n_ctx {h.get('n_ctx')}, "
              f"n_vocab {h.get('n_vocab')}", flush=True)
        for i, (kind, payload) in enumerate(PROMPTS):
            if abort.is_set():
                return
            results[i] = w.generate(i + 1, kind, payload, opts.tokens, not opts.no_logprobs,
                                    {"temp": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k,
                                     "min_p": opts.min_p, "seed": opts.seed})
    except WorkerError as e:
        errors.append(str(e))
        abort.set()
    except Exception as e:  # a frame this script cannot read: a protocol mismatch
        errors.append(f"worker {w.label} ({w.device}): {type(e).__name__}: {e}")
        abort.set()


def compare(a, b):
    """Per-prompt comparison of two generate() results."""
    n = min(len(a["toks"]), len(b["toks"]))
    k = next((i for i in range(n) if a["toks"][i] != b["toks"][i]), n)
    same = a["toks"] == b["toks"] and a["text"] == b["text"] and a["finish"] == b["finish"]
    dlp = np.abs(np.array(a["lps"][:k]) - np.array(b["lps"][:k]))
    r = {"same": same, "common": k, "len_a": len(a["toks"]), "len_b": len(b["toks"]),
         "max_dlogprob": float(dlp.max()) if k else 0.0, "finish_a": a["finish"], "finish_b": b["finish"],
         "text_a": a["text"], "text_b": b["text"]}
    if not same and k < max(len(a["toks"]), len(b["toks"])):
        r["tok_a"] = a["toks"][k] if k < len(a["toks"]) else None
        r["tok_b"] = b["toks"][k] if k < len(b["toks"]) else None
        tops = a["tops"][k] if k < len(a["tops"]) else []
        r["gap_a"] = float(tops[0] - tops[1]) if len(tops) >= 2 else None  # a's top-1 minus top-2 logprob there
    return r


def show(tok):
    """A token for printing: its bytes when they are not whole UTF-8 characters."""
    if tok is None or not any("\udc80" <= c <= "\udcff" for c in tok):
        return repr(tok)
    return repr(tok.encode("utf-8", "surrogateescape"))


def describe(i, r):
    kind, payload = PROMPTS[i]
    snippet = (payload if kind == "raw" else payload[-1]["content"])[:36]
    head = f"{i:2d} {kind:4s} {snippet!r:40s}"
    if r["same"]:
        return (f"{head} agree {r['common']}/{r['len_a']} tokens, {r['finish_a']}, "
                f"max |dlogprob| {r['max_dlogprob']:.2e}")
    if "tok_a" not in r:  # same tokens, different text or finish reason
        return f"{head} DIFFER after {r['common']} equal tokens: finish {r['finish_a']} vs {r['finish_b']}"
    gap = f", a's top-2 gap {r['gap_a']:.3g}" if r.get("gap_a") is not None else ""
    return (f"{head} DIFFER at token {r['common']} of {r['len_a']}/{r['len_b']}: "
            f"a {show(r['tok_a'])} vs b {show(r['tok_b'])}{gap}, max |dlogprob| before {r['max_dlogprob']:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--model", required=True, help="GGUF (or .kolm artifact) both workers load")
    ap.add_argument("--b-model", help="another model for worker b (default: --model)")
    ap.add_argument("--worker", default=os.path.join(repo, "build-gpu-bundle", "bin", "kolm-worker"))
    ap.add_argument("--a", default="cpu", help="device of worker a: cpu or cuda:N")
    ap.add_argument("--b", default="cuda:0", help="device of worker b")
    ap.add_argument("--a-kv", default="f16", choices=["f16", "bf16", "f32", "fp8"])
    ap.add_argument("--b-kv", default="f16", choices=["f16", "bf16", "f32", "fp8"])
    ap.add_argument("--tokens", type=int, default=32, help="max tokens per prompt")
    ap.add_argument("--min-agree", type=float, default=1.0, help="token agreement needed (1.0: exact)")
    ap.add_argument("--max-dlogprob", type=float, help="also fail when a chosen token's logprob differs more")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per worker")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--kv-mib", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=600, help="seconds without a frame before giving up")
    ap.add_argument("--json", help="write the per-prompt results here")
    ap.add_argument("--a-args", default="", help="more kolm-worker options for worker a, e.g. '--cuda-graphs off'")
    ap.add_argument("--b-args", default="", help="more kolm-worker options for worker b")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--seed", type=int, help="request j is seeded seed + j (both workers alike)")
    ap.add_argument("--no-logprobs", action="store_true",
                    help="ask for no logprobs (greedy tokens picked on the backend); compare the texts")
    opts = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # in order with the errors on stderr, under tee
    opts.b_model = opts.b_model or opts.model
    for path in (opts.model, opts.b_model, opts.worker):
        if not os.path.exists(path):
            sys.exit(f"parity.py: {path} does not exist")

    log_dir = tempfile.mkdtemp(prefix="kolm-parity-")
    t0 = time.time()
    other = f" ({opts.b_model})" if opts.b_model != opts.model else ""
    print(f"parity: {opts.model}: a = {opts.a} kv {opts.a_kv}, b = {opts.b} kv {opts.b_kv}{other}, "
          f"{len(PROMPTS)} prompts x {opts.tokens} tokens, logs in {log_dir}", flush=True)
    workers, errors, abort = [], [], threading.Event()
    results = {"a": [None] * len(PROMPTS), "b": [None] * len(PROMPTS)}
    try:
        for label, model, dev, kv, extra in (("a", opts.model, opts.a, opts.a_kv, opts.a_args),
                                             ("b", opts.b_model, opts.b, opts.b_kv, opts.b_args)):
            workers.append(Worker(label, opts.worker, model, dev, kv, opts, log_dir, extra.split()))
        threads = [threading.Thread(target=drive, args=(w, opts, results[w.label], errors, abort)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except OSError as e:
        errors.append(f"cannot start {opts.worker}: {e}")
    finally:
        for w in workers:
            w.close()

    if errors:
        for e in errors:
            print(f"parity: ERROR: {e}", file=sys.stderr)
        print(f"parity: FAIL (worker error) after {time.time() - t0:.1f} s")
        return 2
    rows = [compare(a, b) for a, b in zip(results["a"], results["b"])]
    for i, r in enumerate(rows):
        print(describe(i, r))
    common = sum(r["common"] for r in rows)
    total = sum(max(r["len_a"], r["len_b"]) for r in rows)
    agree = common / total if total else 1.0
    n_same = sum(r["same"] for r in rows)
    max_dlp = max(r["max_dlogprob"] for r in rows)
    ok = agree >= opts.min_agree and (opts.min_agree < 1.0 or n_same == len(rows)) and total > 0
    need_dlp = ""
    if opts.max_dlogprob is not None:
        ok = ok and max_dlp <= opts.max_dlogprob
        need_dlp = f" (need <= {opts.max_dlogprob:.1e})"
    print(f"parity: {n_same}/{len(rows)} prompts identical, {common}/{total} tokens agree ({agree:.3f}, "
          f"need {opts.min_agree:.3f}), max |dlogprob| {max_dlp:.2e}{need_dlp}, {time.time() - t0:.1f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"model": opts.model, "b_model": opts.b_model, "a": [opts.a, opts.a_kv],
                       "b": [opts.b, opts.b_kv], "tokens": opts.tokens, "agree": agree, "identical": n_same,
                       "max_dlogprob": max_dlp, "pass": ok, "prompts": rows}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
