"""Tokenizer oracle: kolm's wk_tok must produce exactly llama.cpp's token ids.

Runs tests/tools/kt_tokenize (built as <build>/tests/kt_tokenize) over a varied set
of strings and compares with llama_cpp.Llama(vocab_only=True).tokenize(...), on the
Gemma 3 GGUF (SentencePiece-style "llama" tokenizer) and on small byte-level BPE
GGUFs ("gpt2" tokenizer with the qwen2, llama-bpe, gpt-2 and default
pre-tokenizers) written here with the gguf package.

Env: KOLM_BUILD (build dir, default /work/main/build), KOLM_TEST_MODEL (Gemma GGUF,
default $KOLM_HOME/models/gemma-3-270m-q4_k_m.gguf, falling back to /tmp/gemma.gguf).
"""

import json
import os
import subprocess

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

BUILD = os.environ.get("KOLM_BUILD", "/work/main/build")
TOOL = os.path.join(BUILD, "tests", "kt_tokenize")


def _gemma_path():
    p = os.environ.get("KOLM_TEST_MODEL")
    if p:
        return p
    home = os.environ.get("KOLM_HOME", os.path.expanduser("~/.kolm"))
    for cand in (os.path.join(home, "models", "gemma-3-270m-q4_k_m.gguf"), "/tmp/gemma.gguf"):
        if os.path.exists(cand):
            return cand
    return "/tmp/gemma.gguf"


TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "double  space   triple    quad",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n\n\n",
    "\r\nwindows\r\nlines\r\n",
    "mixed \t \n \r\n whitespace \n\t end",
    "                                        forty spaces",
    "Ünïcödé àccénts: café, naïve, résumé, São Paulo, Zürich",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский текст: Привет, мир!",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "中文：你好，世界！这是一个测试。",
    "日本語：こんにちは世界、カタカナとひらがな。",
    "한국어: 안녕하세요 세계",
    "Emoji: 😀 😃 🎉 👍🏽 🇫🇷 ❤️",
    "ZWJ: 👨‍👩‍👧‍👦 👩‍💻 🏳️‍🌈 🧑🏿‍🚀",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 1,000,000",
    "Phone +1 (555) 123-4567, ZIP 90210",
    "def f(x):\n    return x * 2  # comment\n",
    "int main(void) { printf(\"%d\\n\", 42); return 0; }",
    "for (let i = 0; i < 10; i++) {\n\tconsole.log(i);\n}",
    "<div class=\"x\"><p>HTML &amp; entities</p></div>",
    "JSON: {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "URL https://example.com/path?q=1&r=two#frag",
    "email: someone@example.org",
    "Contractions: don't, I'm, you're, we've, they'll, he'd, it's, DON'T, I'LL",
    "Punctuation!!! ??? ... --- *** ### @@@ $$$ %%%",
    "Math: ∑ ∫ √ ∞ ≠ ≤ ≥ ± × ÷ ∂ ∇ α β γ",
    "Symbols: © ® ™ € £ ¥ § ¶ † ‡ • …",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "text before <start_of_turn> text after",
    "<bos>explicit bos",
    "<eos> and <pad> and <unk> and <mask>",
    "<unused0><unused1>",
    "a<start_of_turn>b<end_of_turn>c",
    "<start_of_turn><start_of_turn>",
    "<start_of_turn",
    "Combining: e\u0301 a\u0308 n\u0303",
    "Zero width: a\u200bb\u200cc\u200dd\ufeffe",
    "NBSP:\u00a0here and ideographic\u3000space",
    "▁ literal lower one eighth block ▁▁",
    "MiXeD CaSe WoRdS and UPPERCASE and lowercase",
    "repeated aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa letters",
    "1234567890" * 5,
    "The quick brown fox jumps over the lazy dog. " * 8,
    "\n",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "'s 't 're 've 'm 'll 'd",
    "x'S y'T z'Re",
    "Ⅻ ① ² ¾ ٣ ७",
]

FLAGS = [(True, True), (False, False), (True, False), (False, True)]


def run_tool(model, reqs):
    if not os.path.exists(TOOL):
        pytest.fail(f"{TOOL} not built (set KOLM_BUILD)")
    inp = "".join(json.dumps(r) + "\n" for r in reqs)
    p = subprocess.run([TOOL, model], input=inp.encode(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert len(lines) == len(reqs), p.stderr.decode()
    return [json.loads(x) for x in lines]


def compare(model, texts, flags=FLAGS):
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    reqs, want = [], []
    for s in texts:
        for add_bos, special in flags:
            reqs.append({"text": s, "add_bos": add_bos, "special": special})
            want.append(llm.tokenize(s.encode(), add_bos=add_bos, special=special))
    got = run_tool(model, reqs)
    bad = [(r, w, g) for r, w, g in zip(reqs, want, got) if list(w) != g]
    for r, w, g in bad[:10]:
        print("MISMATCH", r, "\n  llama.cpp:", list(w), "\n  kolm:     ", g)
    assert not bad, f"{len(bad)} of {len(reqs)} tokenizations differ"
    return llm


@pytest.fixture(scope="module")
def gemma():
    p = _gemma_path()
    if not os.path.exists(p):
        pytest.skip(f"Gemma GGUF {p} absent")
    return p


def test_gemma_matches_llama_cpp(gemma):
    assert len(TEXTS) >= 40
    compare(gemma, TEXTS)


def test_gemma_special_parsing(gemma):
    r = run_tool(gemma, [{"text": "<start_of_turn>", "add_bos": False, "special": True},
                         {"text": "<start_of_turn>", "add_bos": False, "special": False}])
    assert len(r[0]) == 1  # one control token
    assert len(r[1]) > 1  # spelled out


def test_gemma_roundtrip(gemma):
    texts = [t for t in TEXTS if "\u2581" not in t]  # a literal U+2581 decodes as a space (SentencePiece)
    reqs = [{"text": s, "add_bos": False, "special": False, "decode": True} for s in texts]
    for s, r in zip(texts, run_tool(gemma, reqs)):
        assert r["text"] == s


# ---- byte-level BPE fixtures ----

def _gpt2_bytes():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    m = dict(zip(bs, cs))
    return [chr(m[b]) for b in range(256)]


def _train_merges(corpus, byte_chars, n_merges):
    """A tiny BPE trainer over GPT-2 byte-mapped words (for realistic merges)."""
    import collections
    import re
    words = collections.Counter()
    for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", corpus):
        words[tuple(byte_chars[b] for b in w.encode())] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        nw = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] += c
        words = nw
    return merges


CORPUS = ("the quick brown fox jumps over the lazy dog. The end of the story is near; "
          "hello world, hello there! It's a test: don't worry, we'll see. 12345 67890 "
          "café naïve Привет мир 你好世界 def main(): return 0\n\tint x = 42;\n") * 3


def write_bpe_gguf(path, pre, add_bos):
    import gguf
    import numpy as np
    byte_chars = _gpt2_bytes()
    merges = _train_merges(CORPUS, byte_chars, 300)
    toks = list(byte_chars)
    seen = set(toks)
    for a, b in merges:
        if a + b not in seen:
            toks.append(a + b)
            seen.add(a + b)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [gguf.TokenType.NORMAL] * len(toks) + [gguf.TokenType.CONTROL] * len(specials)
    toks += specials
    w = gguf.GGUFWriter(path, "qwen2" if pre == "qwen2" else "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(len(toks) - 3)
    w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(add_bos)
    w.add_tensor("dummy", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


BPE_TEXTS = [t for t in TEXTS if "<start_of_turn>" not in t] + [
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "before<|endoftext|>after",
]


@pytest.mark.parametrize("pre,add_bos", [("qwen2", False), ("llama-bpe", True), ("gpt-2", False),
                                         ("default", False)])
def test_bpe_matches_llama_cpp(tmp_path, pre, add_bos):
    path = str(tmp_path / f"bpe-{pre}.gguf")
    write_bpe_gguf(path, pre, add_bos)
    compare(path, BPE_TEXTS)
    reqs = [{"text": s, "add_bos": False, "special": False, "decode": True} for s in BPE_TEXTS]
    for s, r in zip(BPE_TEXTS, run_tool(path, reqs)):
        assert r["text"] == s
