#!/usr/bin/env python3
"""What signed artifacts and receipts cost, measured on this machine in one run.

  load    seconds from `kolm serve` to /health 200 (the worker loaded and, for a
          .kolm, every blob hashed against the manifest) for the raw GGUF, the same
          model packed into a .kolm (embedded), and packed by reference (the weights
          in KOLM_HOME/models/ by CID). Runs alternate; medians and ratios to the GGUF.
  receipt aggregate tok/s of N concurrent streams and requests/s of N concurrent
          one-token requests, kolm with receipts (--kolm-bin) against a kolm build
          from before receipts (--kolm-bin-base), rounds alternating A B A B; medians
          and the ratio. Also the gateway's CPU per request for both.

usage: bench/artifact.py --kolm-bin build/bin/kolm --kolm-bin-base OLD/bin/kolm
                         [--model GGUF] [--reps 5] [--streams 8] [--threads 2]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PROMPTS, Server, chat, cpu_ns, free_port, n_completion  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def log(msg):
    print(f"[artifact] {msg}", file=sys.stderr, flush=True)


def run(argv, env):
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


def time_to_ready(kolm, path, home, threads, logdir, extra=()):
    port = free_port()
    env = dict(os.environ, KOLM_HOME=home)
    t0 = time.monotonic()
    srv = Server("load", [kolm, "serve", path, "--port", str(port), "--threads", str(threads), *extra],
                 port, env=env, log_dir=logdir)
    try:
        srv.wait_ready(timeout=300)
        return time.monotonic() - t0
    finally:
        srv.stop()


def load_bench(args, logdir):
    home = os.path.join(logdir, "home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, KOLM_HOME=home)
    run([args.kolm_bin, "keygen"], env)
    emb = os.path.join(logdir, "embedded.kolm")
    ref = os.path.join(logdir, "referenced.kolm")
    t0 = time.monotonic()
    run([args.kolm_bin, "pack", args.model, "-o", emb], env)
    pack_s = time.monotonic() - t0
    run([args.kolm_bin, "pack", args.model, "--reference", "-o", ref], env)
    cases = [("raw GGUF (--allow-unsigned)", args.model, ["--allow-unsigned"]),
             (".kolm, weights embedded", emb, []), (".kolm, weights by reference", ref, [])]
    times = {name: [] for name, _, _ in cases}
    time_to_ready(args.kolm_bin, args.model, home, args.threads, logdir, ["--allow-unsigned"])  # page cache warm
    for rep in range(args.reps):
        for name, path, extra in cases:
            times[name].append(time_to_ready(args.kolm_bin, path, home, args.threads, logdir, extra))
        log(f"load rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()))
    base = statistics.median(times[cases[0][0]])
    rows = [f"| {name} | {statistics.median(t):.3f} | {min(t):.3f}-{max(t):.3f} | "
            f"{statistics.median(t) / base:.2f} |" for name, t in times.items()]
    return pack_s, rows


def round_streams(port, model, n, tokens):
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        results[i] = chat(port, model, PROMPTS[i % len(PROMPTS)], tokens, True)

    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.monotonic() - t0
    ok = [r for r in results if r and r["status"] == 200]
    if len(ok) != n:
        raise RuntimeError(f"{n - len(ok)} of {n} streams failed")
    return sum(n_completion(r)[0] for r in ok) / wall


def round_requests(port, model, n, per_thread):
    barrier = threading.Barrier(n)
    fails = []

    def one(i):
        barrier.wait()
        for k in range(per_thread):
            r = chat(port, model, PROMPTS[(i + k) % len(PROMPTS)], 1, False)
            if r["status"] != 200:
                fails.append(r["status"])

    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in th:
        t.start()
    for t in th:
        t.join()
    if fails:
        raise RuntimeError(f"{len(fails)} requests failed: {fails[:5]}")
    return n * per_thread / (time.monotonic() - t0)


def receipt_bench(args, logdir):
    servers = {}
    home = os.path.join(logdir, "home-receipts")
    os.makedirs(home, exist_ok=True)
    for name, binary in [("with receipts", args.kolm_bin), ("before receipts", args.kolm_bin_base)]:
        port = free_port()
        argv = [binary, "serve", args.model, "--port", str(port), "--threads", str(args.threads)]
        if name == "with receipts":
            argv.append("--allow-unsigned")
        srv = Server(name.replace(" ", "-"), argv, port, env=dict(os.environ, KOLM_HOME=home), log_dir=logdir)
        srv.wait_ready()
        chat(port, srv.model, "Hello!", 4, True)  # warm-up
        servers[name] = srv
    tok = {n: [] for n in servers}
    rps = {n: [] for n in servers}
    cpu = {n: [] for n in servers}
    try:
        for rep in range(args.reps):
            for name, srv in servers.items():
                tok[name].append(round_streams(srv.port, srv.model, args.streams, args.tokens))
                c0 = cpu_ns(srv.proc.pid)
                k = args.streams * 4
                rps[name].append(round_requests(srv.port, srv.model, args.streams, 4))
                cpu[name].append((cpu_ns(srv.proc.pid) - c0) / 1e3 / k)
            log(f"receipt rep {rep + 1}: " + ", ".join(
                f"{n} {tok[n][-1]:.1f} tok/s {rps[n][-1]:.1f} req/s {cpu[n][-1]:.0f} us/req" for n in servers))
    finally:
        for srv in servers.values():
            srv.stop()
    a, b = "with receipts", "before receipts"
    ratio = lambda d: statistics.median([x / y for x, y in zip(d[a], d[b])])  # noqa: E731
    rows = [f"| agg tok/s @{args.streams} streams of {args.tokens} | {statistics.median(tok[a]):.1f} | "
            f"{statistics.median(tok[b]):.1f} | {ratio(tok):.3f} |",
            f"| requests/s @{args.streams} (max_tokens=1) | {statistics.median(rps[a]):.1f} | "
            f"{statistics.median(rps[b]):.1f} | {ratio(rps):.3f} |",
            f"| gateway CPU us/request | {statistics.median(cpu[a]):.0f} | {statistics.median(cpu[b]):.0f} | "
            f"{ratio(cpu):.2f} |"]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kolm-bin", default=str(REPO / "build" / "bin" / "kolm"))
    ap.add_argument("--kolm-bin-base", help="a kolm built from before receipts (skip the receipt A/B without)")
    ap.add_argument("--model", default=os.path.join(os.environ.get("KOLM_HOME", os.path.expanduser("~/.kolm")),
                                                    "models", "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logdir = tempfile.mkdtemp(prefix="kolm-artifact-bench-")
    try:
        pack_s, load_rows = load_bench(args, logdir)
        print(f"\nmodel {os.path.basename(args.model)} ({os.path.getsize(args.model)} bytes), "
              f"{args.threads} threads, {os.cpu_count()} cores, {args.reps} reps; pack took {pack_s:.2f} s\n")
        print("| start to /health 200 | median s | min-max s | vs raw GGUF |\n|---|---|---|---|")
        print("\n".join(load_rows))
        if args.kolm_bin_base:
            rows = receipt_bench(args, logdir)
            print("\n| receipts A/B | with receipts | before receipts | ratio (median of pairs) |\n|---|---|---|---|")
            print("\n".join(rows))
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
