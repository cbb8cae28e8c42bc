#!/usr/bin/env python3
"""bench/gpu.py: end-to-end decode bench of kolm-worker against transformers `generate`.

One seeded random-weight Qwen2 model (Qwen2.5-0.5B's shape by default, bf16, tied
embeddings) is built with torch/transformers; its weights are written unchanged as a
GGUF (bf16 matrices, f32 norms and biases) with a synthetic byte-level vocabulary of
the same size. Then, for each batch size B (1, 8, 64, 256), B greedy sequences of P
prompt tokens (random ids, the same for both) generate N tokens each:

  kolm   one kolm-worker (spawned and spoken to through tests/gpu/parity.py's Worker),
         B jobs submitted at once. Decode step time: the mean interval between a
         sequence's consecutive token events inside the window where all B sequences
         are decoding (after the last first token, before the first last token); the
         median is in the JSON too, but it bunches when this client falls behind.
         Aggregate tokens/s: B x N over first submit to last finish (prefill included).
         The protocol has no ignore_eos, so EOS and BOS get a -100 logit bias, and so
         do the 128 lone UTF-8 lead/continuation byte tokens, so that every token is
         one DELTA event (one timestamp per token; checked against the FINISH counts).
  roofline  (weight bytes read per step + KV bytes read at the window's mean context)
         / the device-to-device copy bandwidth from gpu_bench's JSON (read+written
         convention). Weight bytes: every tensor but token_embd, which is read whole
         only as the tied output matrix. Reported: roofline ms and its fraction of
         the measured step (target: >= 80% at B = 1).
  KV waste  1 - tokens held / slots in the blocks in use (kv_total - kv_free -
         kv_cached blocks of 16), the mean over STATS replies asked for every ~8 steps
         of the decode window, next to the same formula for whole blocks of those
         lengths (target < 4%; with blocks of 16 the last, partial block alone is
         ~7.5 / mean length).
  hf     model.generate(greedy, min_new_tokens = max_new_tokens = N) on the same
         weights in bf16; tokens/s over the whole call, and kolm's ratio to it.

N grows with B where prefill would otherwise leave no all-decoding window (prefill
runs 512 tokens a step next to the decodes): N_B = max(N, 2 * ceil(B * P / 512) + 16);
both sides use the same N_B. --budget-s bounds the whole run: a case whose predicted
time (from the previous batch size, scaled linearly in B) does not fit what is left
is skipped and says so.

  gpu.py --worker build-gpu-bundle/bin/kolm-worker --bench-json build-gpu/gpu_bench.json
  gpu.py --device cpu --shape tiny --batches 1,4 --worker build/bin/kolm-worker   (CPU check)

Needs numpy, msgpack, torch, transformers and the `gguf` package; without `gguf` it
unpacks the wheels in --wheels (tests/gpu/bundle.sh puts gguf's there) and uses them.
Prints a table last and rows for tests/gpu/run.sh ("row: NAME = VALUE"); --json
writes everything. Exit 0 when every case that ran worked, 1 on a failed case, 2 on
a setup error.
"""
import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
import types
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "gpu"))
sys.path.insert(0, os.path.join(REPO, "tests"))

import parity  # noqa: E402  (the worker process and frame code; needs numpy and msgpack)

STATS_REQ, STATS = 5, 6  # proto.h frame types parity.py does not use
BLOCK = 16               # the worker's default --block-size
STEP_TOKENS = 512        # the worker's prefill budget per step (wk_main.c)

# Qwen2.5 shapes (hidden, layers, heads, kv heads, intermediate, vocab, tied).
SHAPES = {
    "tiny": (64, 2, 4, 2, 128, 512, True),
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "3b": (2048, 36, 16, 2, 11008, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
}
KV_HEAD_BYTES = {"f16": lambda hd: 2 * hd, "bf16": lambda hd: 2 * hd, "f32": lambda hd: 4 * hd,
                 "fp8": lambda hd: 4 + hd}  # wk_kv_head_bytes; fp8 = E4M3 codes + a f32 scale


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def skip_why(guess, budget, o):
    return f"predicted {guess:.0f} s, {budget.left():.0f} s of the budget left, {o.reserve_s:.0f} s kept back"


def log(msg):
    print(f"gpu.py: {msg}", flush=True)


# ---------------------------------------------------------------- imports

def import_gguf(wheels, workdir):
    """The gguf package: installed, or unpacked from the bundle's pure-python wheels."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        # gguf.metadata imports yaml at import time; writing a file never uses it.
        sys.modules["yaml"] = types.ModuleType("yaml")
    try:
        import gguf
        return gguf
    except ImportError:
        pass
    found = sorted(f for f in os.listdir(wheels) if f.endswith(".whl")) if os.path.isdir(wheels) else []
    if not found:
        raise RuntimeError(f"no gguf package and no wheels in {wheels} (tests/gpu/bundle.sh puts them there)")
    target = os.path.join(workdir, "pylib")
    os.makedirs(target, exist_ok=True)
    for f in found:  # a pure-python wheel is a zip of the package directories
        with zipfile.ZipFile(os.path.join(wheels, f)) as z:
            z.extractall(target)
    sys.path.insert(0, target)
    import gguf
    log(f"gguf {getattr(gguf, '__version__', '?')} from {', '.join(found)}")
    return gguf


# ---------------------------------------------------------------- model

def build_model(torch, transformers, shape, seed, device):
    hidden, layers, heads, kv_heads, inter, vocab, tied = SHAPES[shape]
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, max_position_embeddings=32768,
                                   rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=tied,
                                   use_sliding_window=False)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialize in bf16 directly, on the device
    try:
        with torch.device(device):
            model = transformers.Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    # Parameters are bf16 already; a blanket .to(bf16) would also round the rotary
    # inverse frequencies, which transformers keeps in f32.
    if any(p.dtype != torch.bfloat16 for p in model.parameters()):
        model = model.to(dtype=torch.bfloat16)
    return model.eval(), cfg


def rope_theta(cfg):
    theta = getattr(cfg, "rope_theta", None)  # transformers 4; 5 keeps it in rope_parameters
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    return float(theta if theta is not None else 1e6)


def bench_vocab(tg, n_vocab):
    """tinygguf's byte-level vocabulary padded with plain ASCII tokens to n_vocab:
    (tokens, types, merges, bos, eos). Specials (BOS, EOS) stay last."""
    toks, types_, merges, _, _ = tg.vocab()
    n_fill = n_vocab - len(toks)
    if n_fill < 0:
        raise ValueError(f"vocab {n_vocab} is smaller than tinygguf's {len(toks)}")
    toks = toks[:-2] + [f"x{i}" for i in range(n_fill)] + toks[-2:]
    types_ = types_[:-2] + [types_[0]] * n_fill + types_[-2:]
    return toks, types_, merges, n_vocab - 2, n_vocab - 1


def write_gguf(gguf, tg, torch, model, cfg, path):
    """Writes model's weights as a qwen2 GGUF; returns (bos, eos, bytes read per step)."""
    hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = hidden // heads
    toks, types_, merges, bos, eos = bench_vocab(tg, cfg.vocab_size)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("bench-qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types_)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)

    sizes = {}

    def put(name, t):
        t = t.detach().to("cpu").contiguous()
        if t.dim() == 1:  # norms and biases in f32, as llama.cpp's converters keep them (exact)
            arr = t.float().numpy()
            w.add_tensor(name, arr)
        else:  # bf16 bits as they are: numpy shape (rows, row length) = ggml ne [n_in, n_out]
            arr = t.view(torch.int16).numpy().view("uint16")
            w.add_tensor(name, arr, raw_dtype=gguf.GGMLQuantizationType.BF16)
        sizes[name] = arr.nbytes

    m = model.model
    tied = model.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr()
    put("token_embd.weight", m.embed_tokens.weight)
    put("output_norm.weight", m.norm.weight)
    if not tied:
        put("output.weight", model.lm_head.weight)
    for i, L in enumerate(m.layers):
        p, a, f = f"blk.{i}.", L.self_attn, L.mlp
        put(p + "attn_norm.weight", L.input_layernorm.weight)
        for n, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj)):
            put(p + f"attn_{n}.weight", lin.weight)
            put(p + f"attn_{n}.bias", lin.bias)
        put(p + "attn_output.weight", a.o_proj.weight)
        put(p + "ffn_norm.weight", L.post_attention_layernorm.weight)
        put(p + "ffn_gate.weight", f.gate_proj.weight)
        put(p + "ffn_up.weight", f.up_proj.weight)
        put(p + "ffn_down.weight", f.down_proj.weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Per step the input embedding is B rows (get_rows); the tied output reads it whole.
    per_step = sum(sizes.values()) - (0 if tied else sizes["token_embd.weight"])
    return bos, eos, per_step, tied


def prompts_for(B, P, n_vocab, seed):
    """B random prompts of P token ids below BOS (the same for kolm and hf; a new set
    per batch size, so that kolm's prefix cache serves none of them)."""
    import numpy as np
    rng = np.random.default_rng(seed * 1000 + B)
    return rng.integers(0, n_vocab - 2, size=(B, P)).tolist()


def gen_tokens(B, P, N):
    return max(N, 2 * math.ceil(B * P / STEP_TOKENS) + 16)


# ---------------------------------------------------------------- kolm

def worker_wrapper(workdir, exe, extra, ld_path):
    """parity.Worker spawns `exe` with its fixed options; this script execs the real
    worker with those and then ours (the worker takes an option's last value), with
    ld_path before LD_LIBRARY_PATH for the worker alone: this process has torch's
    CUDA libraries loaded, which the bundle's or the toolkit's must not displace."""
    path = os.path.join(workdir, "kolm-worker-bench")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# bench/gpu.py: parity.Worker's options, then the bench's\n")
        if ld_path:
            f.write(f'LD_LIBRARY_PATH={shlex.quote(ld_path)}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n'
                    'export LD_LIBRARY_PATH\n')
        f.write(f'exec {shlex.quote(os.path.abspath(exe))} "$@" {" ".join(shlex.quote(str(a)) for a in extra)}\n')
    os.chmod(path, 0o755)
    return path


class TimedSock:
    """A Worker's socket with the seconds spent waiting in recv counted: a client that
    hardly waits is what limits the rate it measures."""

    def __init__(self, sock):
        self.sock, self.wait = sock, 0.0

    def recv(self, n):
        t = time.perf_counter()
        try:
            return self.sock.recv(n)
        finally:
            self.wait += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self.sock, name)


def kolm_batch(w, B, P, N, prompts, bias, job0):
    """B jobs at once; per job its token event times, completion count and finish."""
    times = [[] for _ in range(B)]
    ct, finish, stats = [None] * B, [None] * B, []
    asked_at = None  # token events received when STATS was last asked for
    wait0 = w.sock.wait
    t_sub = time.perf_counter()
    for i in range(B):
        w.send(parity.SUBMIT, {"job": job0 + i, "msgs": [], "prompts": [prompts[i]], "n": 1, "max_tokens": N,
                               "temp": 0.0, "top_p": 1.0, "top_k": 0, "pres": 0.0, "freq": 0.0, "lp": 0,
                               "top_lp": 0, "echo": 0, "bias": bias})
    done = started = events = 0
    while done < B:
        ftype, m = w.recv()
        now = time.perf_counter()
        if ftype == STATS:
            # The counts received so far are those emitted before this reply was encoded.
            stats.append({"t": now, "stats": m, "n_gen": [len(t) for t in times]})
            continue
        if ftype != parity.EVENT:
            continue
        j = m.get("job", -1) - job0
        if not 0 <= j < B:
            continue
        k = m["kind"]
        if k == parity.DELTA:
            if not times[j]:
                started += 1
            times[j].append(now)
            events += 1
            # Once every sequence decodes, the KV pool's state about every 8 steps.
            if started == B and (asked_at is None or events - asked_at >= 8 * B):
                w.send(STATS_REQ, {})
                asked_at = events
        elif k == parity.ERROR:
            raise parity.WorkerError(f"job {job0 + j}: {m.get('status')} {m.get('code')}: {m.get('msg')}")
        elif k == parity.FINISH and m.get("last"):
            ct[j], finish[j] = m.get("ct"), parity.FINISH_NAMES.get(m.get("finish"), m.get("finish"))
            if m.get("cached"):
                log(f"note: job {job0 + j} had {m['cached']} prompt tokens from the prefix cache")
            done += 1
    t_end = time.perf_counter()
    return {"t_sub": t_sub, "t_end": t_end, "times": times, "ct": ct, "finish": finish, "stats": stats,
            "client_wait": (w.sock.wait - wait0) / (t_end - t_sub)}


def analyze_kolm(r, B, P, N, weight_bytes, kv_tok_bytes, copy_gbps):
    times, ct = r["times"], r["ct"]
    if not all(times):
        raise parity.WorkerError(f"B={B}: {sum(not t for t in times)} sequences produced no token event")
    total = sum(c or 0 for c in ct)
    res = {"B": B, "P": P, "N": N, "tokens": total, "wall_s": r["t_end"] - r["t_sub"],
           "tok_s": total / (r["t_end"] - r["t_sub"]), "finish": sorted(set(map(str, r["finish"]))),
           "events_per_token": sum(map(len, times)) / total if total else None,
           "client_wait": r["client_wait"]}
    t0 = max(t[0] for t in times)   # the last sequence's first token: all prompts are in
    t1 = min(t[-1] for t in times)  # the first sequence's last token: none has finished
    iv, ctx = [], []
    for t in times:
        for k in range(1, len(t)):
            if t[k - 1] >= t0 and t[k] <= t1:
                iv.append(t[k] - t[k - 1])
                ctx.append(P + k)  # the step that made token k attended the prompt and k tokens
    res["window"] = "all decoding"
    if len(iv) < 3:  # too short a window: every interval after each first token (prefill mixed in)
        res["window"] = "mixed with prefill (no all-decoding window)"
        iv = [t[k] - t[k - 1] for t in times for k in range(1, len(t))]
        ctx = [P + k for t in times for k in range(1, len(t))]
    if iv:
        # The mean, not the median: this client timestamps frames as it parses them, so
        # when it reads several steps' events in one go their intervals bunch up (tiny,
        # then one long); their sum over the window is still the window's length.
        res["step_ms"] = 1e3 * sum(iv) / len(iv)
        iv.sort()
        res["step_median_ms"] = 1e3 * iv[len(iv) // 2]
        res["bunched"] = sum(x < 0.25e-3 * res["step_ms"] for x in iv) / len(iv)
        res["intervals"] = len(iv)
        res["mean_ctx"] = sum(ctx) / len(ctx)
        res["decode_tok_s"] = B / (res["step_ms"] * 1e-3)
        step_bytes = weight_bytes + B * res["mean_ctx"] * kv_tok_bytes
        res["step_bytes"] = step_bytes
        if copy_gbps:
            res["roofline_ms"] = step_bytes / (copy_gbps * 1e9) * 1e3
            res["roofline_frac"] = res["roofline_ms"] / res["step_ms"]
    # KV waste from the STATS replies while all B sequences ran (between steps: a
    # sequence of P + n tokens holds the K/V of P + n - 1, its last token's goes in
    # at the next step). Blocks held only by the prefix cache (earlier cases) are not
    # in use.
    samples = []
    for s in r["stats"]:
        st = s["stats"]
        used_blocks = st.get("kv_total", 0) - st.get("kv_free", 0) - st.get("kv_cached", 0)
        if s["t"] < t0 or used_blocks <= 0 or st.get("running") != B:
            continue
        held = [P + n - 1 for n in s["n_gen"]]
        whole = sum(math.ceil(n / BLOCK) * BLOCK for n in held)
        samples.append({"blocks_used": used_blocks, "tokens": sum(held), "waste": 1 - sum(held) / (used_blocks * BLOCK),
                        "waste_whole_blocks": 1 - sum(held) / whole})
    if samples:
        res["kv"] = {"waste": sum(x["waste"] for x in samples) / len(samples),
                     "waste_whole_blocks": sum(x["waste_whole_blocks"] for x in samples) / len(samples),
                     "waste_max": max(x["waste"] for x in samples), "samples": samples,
                     "kv_total": r["stats"][-1]["stats"].get("kv_total")}
    res["max_running"] = max((s["stats"].get("running", 0) for s in r["stats"]), default=None)
    return res


def run_kolm(o, model_path, bos, eos, n_vocab, weight_bytes, kv_tok_bytes, copy_gbps, budget, workdir, results):
    Ns = {B: gen_tokens(B, o.prompt_len, o.gen) for B in o.batches}
    max_len = o.prompt_len + max(Ns.values())
    need_blocks = max(o.batches) * (math.ceil((max_len + 1) / BLOCK) + 1)
    block_bytes = BLOCK * kv_tok_bytes
    kv_mib = math.ceil(need_blocks * block_bytes * 1.5 / (1 << 20)) + 16
    extra = ["--max-seqs", max(o.batches), "--block-size", BLOCK]
    exe = worker_wrapper(workdir, o.worker, extra, o.worker_ld_path)
    wopts = types.SimpleNamespace(threads=o.threads, ctx=max_len + BLOCK, kv_mib=kv_mib, timeout=o.timeout)
    log(f"kolm: {o.worker} --device {o.device} --kv-dtype {o.kv_dtype} --kv-mib {kv_mib} "
        f"{' '.join(map(str, extra))}, log in {workdir}/worker-a.log")
    # BOS/EOS never (no ignore_eos in the protocol), nor a lone byte >= 0x80 (one DELTA per token).
    bias = [[t, -100.0] for t in [bos, eos] + list(range(128, 256))]
    w = parity.Worker("a", exe, model_path, o.device, o.kv_dtype, wopts, workdir)
    w.sock = TimedSock(w.sock)
    ok = True
    try:
        h = w.hello()
        log(f"kolm: worker up: {h.get('arch')}, n_ctx {h.get('n_ctx')}, n_vocab {h.get('n_vocab')}")
        kolm_batch(w, 1, 16, 4, prompts_for(1, 16, n_vocab, o.seed + 99), bias, 1)  # warm-up
        job, prev = 100, None
        for B in o.batches:
            N = Ns[B]
            if prev:  # predicted from the previous case, linear in B (pessimistic)
                pB, pr = prev
                steps = math.ceil(B * o.prompt_len / STEP_TOKENS) + N
                guess = pr["step_ms"] * 1e-3 * B / pB * steps if "step_ms" in pr else pr["wall_s"] * B / pB
                if guess > budget.left() - o.reserve_s:
                    results[B]["kolm_skipped"] = skip_why(guess, budget, o)
                    log(f"kolm B={B}: skipped ({results[B]['kolm_skipped']})")
                    continue
            r = kolm_batch(w, B, o.prompt_len, N, prompts_for(B, o.prompt_len, n_vocab, o.seed), bias, job)
            job += B
            res = analyze_kolm(r, B, o.prompt_len, N, weight_bytes, kv_tok_bytes, copy_gbps)
            results[B]["kolm"] = res
            prev = (B, res)
            kv = res.get("kv")
            log(f"kolm B={B} N={N}: {res['tokens']} tokens in {res['wall_s']:.2f} s ({res['tok_s']:.1f} tok/s), "
                f"step {res.get('step_ms', float('nan')):.3f} ms mean over {res.get('intervals', 0)} intervals "
                f"({res['window']}; median {res.get('step_median_ms', float('nan')):.3f} ms, "
                f"{100 * res.get('bunched', 0):.0f}% under a quarter of the mean; client waited "
                f"{100 * res['client_wait']:.0f}% of the time), events/token {res['events_per_token']:.3f}, "
                f"max running {res['max_running']}"
                + (f", KV waste {100 * kv['waste']:.2f}% mean of {len(kv['samples'])} STATS (whole blocks of "
                   f"those lengths: {100 * kv['waste_whole_blocks']:.2f}%)" if kv else ", no STATS in the window"))
            if res["tokens"] != B * N:
                log(f"kolm B={B}: WARNING {res['tokens']} tokens, expected {B * N} (finish {res['finish']})")
    except (parity.WorkerError, OSError) as e:
        log(f"kolm: ERROR: {e}")
        ok = False
    finally:
        w.close()
    return ok


# ---------------------------------------------------------------- transformers

def run_hf(o, torch, model, eos, n_vocab, budget, results):
    prev, ok = None, True
    sync = torch.cuda.synchronize if o.device.startswith("cuda") else (lambda: None)
    for B in o.batches:
        N = gen_tokens(B, o.prompt_len, o.gen)
        if prev:
            pB, pN, pt = prev
            guess = pt * B / pB * N / pN
            if guess > budget.left() - o.reserve_s:
                results[B]["hf_skipped"] = skip_why(guess, budget, o)
                log(f"hf B={B}: skipped ({results[B]['hf_skipped']})")
                continue
        ids = torch.tensor(prompts_for(B, o.prompt_len, n_vocab, o.seed), dtype=torch.long, device=o.device)
        mask = torch.ones_like(ids)
        kw = dict(attention_mask=mask, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        try:
            with torch.inference_mode():
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
                sync()
                t0 = time.perf_counter()
                out = model.generate(ids, max_new_tokens=N, min_new_tokens=N, **kw)
                sync()
                dt = time.perf_counter() - t0
        except Exception as e:  # an API or memory problem ends the hf side, not the run
            log(f"hf B={B}: ERROR: {type(e).__name__}: {e}")
            results[B]["hf_error"] = f"{type(e).__name__}: {e}"
            ok = False
            break
        n_new = int(out.shape[1]) - o.prompt_len
        results[B]["hf"] = {"B": B, "N": N, "tokens": B * n_new, "wall_s": dt, "tok_s": B * n_new / dt}
        log(f"hf B={B} N={N}: {B * n_new} tokens in {dt:.2f} s ({B * n_new / dt:.1f} tok/s)")
        if n_new != N:
            log(f"hf B={B}: WARNING generated {n_new} tokens, expected {N}")
        prev = (B, N, dt)
        del out
    return ok


# ---------------------------------------------------------------- report

def pct(x):
    return f"{100 * x:.1f}%" if x is not None else "n/a"


def report(o, meta, results):
    print()
    cb = f"copy {meta['copy_gbps']:.0f} GB/s (gpu_bench)" if meta["copy_gbps"] else "no copy bandwidth: no roofline"
    print(f"gpu.py: qwen2 {o.shape} bf16, {meta['params'] / 1e6:.1f}M params, {meta['weight_bytes'] / 1e9:.3f} GB "
          f"read per step, P={o.prompt_len}, kv {o.kv_dtype}, {o.device}; {cb}")
    print(f"{'B':>4} {'N':>4} {'step ms':>9} {'roof ms':>8} {'% roof':>7} {'kolm tok/s':>11} {'hf tok/s':>9} "
          f"{'kolm/hf':>8} {'kv waste':>9}")
    rows = []
    for B in o.batches:
        r = results[B]
        k, h = r.get("kolm"), r.get("hf")
        N = gen_tokens(B, o.prompt_len, o.gen)
        step = f"{k['step_ms']:.3f}" if k and "step_ms" in k else "-"
        roof = f"{k['roofline_ms']:.3f}" if k and "roofline_ms" in k else "-"
        frac = pct(k.get("roofline_frac")) if k else "-"
        ktps = f"{k['tok_s']:.1f}" if k else r.get("kolm_skipped") and "skipped" or "-"
        htps = f"{h['tok_s']:.1f}" if h else (r.get("hf_skipped") and "skipped") or (o.no_hf and "off") or "-"
        ratio = f"{k['tok_s'] / h['tok_s']:.2f}x" if k and h else "-"
        waste = pct(k["kv"]["waste"]) if k and k.get("kv") else "-"
        print(f"{B:>4} {N:>4} {step:>9} {roof:>8} {frac:>7} {ktps:>11} {htps:>9} {ratio:>8} {waste:>9}")
        if k and "step_ms" in k:
            target = " (target >= 80%)" if B == 1 else ""
            rf = f", {pct(k['roofline_frac'])} of roofline {k['roofline_ms']:.3f} ms{target}" \
                if "roofline_frac" in k else ""
            mixed = "" if k["window"] == "all decoding" else f" [{k['window']}]"
            if k["client_wait"] < 0.1:  # the client, not the worker, may set this pace
                mixed += f" [client-bound: it waited {100 * k['client_wait']:.0f}% of the time]"
            rows.append((f"bench decode b={B}", f"{k['step_ms']:.3f} ms/step{rf}{mixed}"))
        elif r.get("kolm_skipped"):
            rows.append((f"bench decode b={B}", f"skipped: {r['kolm_skipped']}"))
        if k and h:
            rows.append((f"bench kolm/hf b={B}", f"{k['tok_s'] / h['tok_s']:.2f}x ({k['tok_s']:.0f} vs "
                                                  f"{h['tok_s']:.0f} tok/s, N={N})"))
        elif k and r.get("hf_skipped"):
            rows.append((f"bench kolm/hf b={B}", f"hf skipped: {r['hf_skipped']}"))
    wastes = [(results[B]["kolm"]["kv"]["waste"], B) for B in o.batches if results[B].get("kolm", {}).get("kv")]
    if wastes:
        worst = max(wastes)
        rows.append(("bench KV waste (blocks of 16)", f"{pct(worst[0])} at b={worst[1]} (target < 4%), "
                                                      f"P={o.prompt_len}"))
    print()
    for name, val in rows:
        print(f"row: {name} = {val}")


def parse_batches(s):
    v = [int(x) for x in s.split(",") if x.strip()]
    if not v or any(b < 1 or b > 1024 for b in v):
        raise argparse.ArgumentTypeError("batch sizes in 1..1024")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", default=os.path.join(REPO, "build-gpu-bundle", "bin", "kolm-worker"))
    ap.add_argument("--worker-ld-path", help="library directories (a:b) for the worker process only")
    ap.add_argument("--bench-json", help="gpu_bench's --json output (copy bandwidth for the roofline)")
    ap.add_argument("--copy-gbps", type=float, help="the copy bandwidth instead of --bench-json")
    ap.add_argument("--device", default="cuda:0", help="cuda:N (both sides) or cpu")
    ap.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    ap.add_argument("--batches", type=parse_batches, default=[1, 8, 64, 256])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64, help="tokens per sequence (grown at large B, see above)")
    ap.add_argument("--kv-dtype", default="f16", choices=sorted(KV_HEAD_BYTES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="worker --threads (0: all CPUs)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds without a frame from the worker")
    ap.add_argument("--budget-s", type=float, default=200, help="the whole run's time budget")
    ap.add_argument("--reserve-s", type=float, default=10, help="kept back when deciding to skip a case")
    ap.add_argument("--no-hf", action="store_true", help="kolm only (no transformers generate)")
    ap.add_argument("--workdir", help="model and logs (default: a new temporary directory)")
    ap.add_argument("--wheels", default=os.path.join(REPO, "build-gpu-bundle", "wheels"))
    ap.add_argument("--json", help="write the results here")
    o = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    budget = Budget(o.budget_s)
    workdir = o.workdir or tempfile.mkdtemp(prefix="kolm-gpu-bench-")
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(o.worker):
        log(f"ERROR: no worker at {o.worker}")
        return 2

    copy_gbps = o.copy_gbps
    if copy_gbps is None and o.bench_json:
        try:
            with open(o.bench_json) as f:
                copy_gbps = json.load(f).get("copy_gbps")
        except (OSError, ValueError) as e:
            log(f"cannot read {o.bench_json}: {e}; no roofline")
    try:
        import torch
        import transformers
        gguf = import_gguf(o.wheels, workdir)
        import fixtures.tinygguf as tg  # after import_gguf: it imports gguf
    except Exception as e:
        log(f"ERROR: setup: {type(e).__name__}: {e}")
        return 2
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, budget {o.budget_s:.0f} s, "
        f"workdir {workdir}")
    if o.device.startswith("cuda") and not torch.cuda.is_available():
        log(f"ERROR: --device {o.device} but torch sees no CUDA device")
        return 2

    t0 = time.monotonic()
    model, cfg = build_model(torch, transformers, o.shape, o.seed, o.device)
    params = sum(p.numel() for p in model.parameters())
    model_path = os.path.join(workdir, f"bench-qwen2-{o.shape}.gguf")
    bos, eos, weight_bytes, tied = write_gguf(gguf, tg, torch, model, cfg, model_path)
    log(f"model: qwen2 {o.shape}, {params / 1e6:.1f}M params, tied {tied}, {os.path.getsize(model_path) / 1e9:.3f} GB "
        f"GGUF, {weight_bytes / 1e9:.3f} GB read per step, in {time.monotonic() - t0:.1f} s")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_tok_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * KV_HEAD_BYTES[o.kv_dtype](head_dim)
    meta = {"shape": o.shape, "params": params, "weight_bytes": weight_bytes, "kv_token_bytes": kv_tok_bytes,
            "copy_gbps": copy_gbps, "tied": tied, "kv_dtype": o.kv_dtype, "device": o.device,
            "prompt_len": o.prompt_len, "gen": o.gen, "torch": torch.__version__,
            "transformers": transformers.__version__, "model_path": model_path,
            "roofline": "(weight bytes + B x mean ctx x KV bytes per token) / copy_gbps (read+written)"}
    results = {B: {} for B in o.batches}

    ok = run_kolm(o, model_path, bos, eos, cfg.vocab_size, weight_bytes, kv_tok_bytes, copy_gbps, budget, workdir,
                  results)
    if not o.no_hf:
        ok = run_hf(o, torch, model, eos, cfg.vocab_size, budget, results) and ok
    report(o, meta, results)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"meta": meta, "results": [dict(B=B, **results[B]) for B in o.batches], "ok": ok}, f,
                      indent=1)
    log(f"{'done' if ok else 'FAILED'} in {o.budget_s - budget.left():.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
