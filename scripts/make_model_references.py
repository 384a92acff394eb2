#!/usr/bin/env python3
"""Reference outputs for the pretrained models in models/, computed with libraries we did not
write (sentence-transformers, transformers, tokenizers, gguf, llama.cpp), written as small
committed fixtures that the Rust tests of crates/bllm-models check against.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 \\
        /tmp/pyref/bin/python scripts/make_model_references.py            # minilm smollm2 dequant
    ... scripts/make_model_references.py minilm                           # one part
    ... scripts/make_model_references.py crosscheck                       # tokenizer cross-check, prints only

(The script sets those four environment variables itself before importing torch, and uses 2
torch threads, so the plain command works too.) Models must be unpacked first
(scripts/fetch_models.py). Every part writes the same bytes on a rerun with the same library
versions (checked: two runs, identical sha256).

Parts and fixtures (all under crates/bllm-models/tests/fixtures/):

minilm -> minilm_token_ids.txt
    all-MiniLM-L6-v2 (models/minilm) token ids of every line of datasets/kjv-minilm/verses.txt
    (10,000 lines; each line taken WHOLE, i.e. "<reference>\\t<verse text>", only the trailing
    "\\n" stripped), exactly as `SentenceTransformer(models/minilm, device="cpu")
    .tokenize([line])["input_ids"]` gives them: [CLS] ... [SEP], max_seq_length 256 with
    truncation, no padding (one text per call). Format:
      line 1:   "# ..." header (what, how, library versions)
      line 2+i: "<count> <hash>" for verse i (0-based), hash = first 8 hex chars of
                sha256 over the ids as little-endian u32
      then:     "= <i> <id> <id> ..." full ids for i < 50 and for every verse with count > 100,
                in ascending i.
    NB datasets/kjv-minilm/embeddings.npy was made from the verse text only (after the TAB),
    not from the whole line. The part also asserts that the bare `tokenizers` library on
    models/minilm/tokenizer.json gives the same ids once that file's own settings (truncation
    at 128 and Fixed(128) padding!) are replaced by no_padding() + enable_truncation(256).

smollm2 -> smollm2_reference.json, smollm2_prompt0_last_logits.npy
    Teacher: transformers `AutoModelForCausalLM.from_pretrained(models/smollm2,
    gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf, dtype=float32)` (dequantises every tensor to
    f32 with gguf.quants.dequantize and un-permutes attn_q/attn_k rows), eval mode, fp32,
    attn_implementation="eager", torch CPU, 2 threads, no grad.
    Tokenizer: built with `tokenizers` from the GGUF vocabulary and merges to match SmolLM2's
    real tokenizer.json: BPE (no unk, no byte_fallback, no dropout), pre_tokenizer
    Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
    trim_offsets=True, use_regex=True)], ByteLevel decoder, no normaliser, no post-processor
    (no BOS/EOS), the 17 control tokens (ids 0..16, token_type 3) as special added tokens
    (recognised anywhere in the text). transformers' own GGUF tokenizer does NOT know
    tokenizer.ggml.pre="smollm" and uses plain GPT-2 ByteLevel splitting; its ids are stored
    as `tokenizer_ids_gpt2_fallback` for documentation only.
    JSON keys:
      gguf_sha256, versions, model (config summary), notes
      tokenizer: {vocab_size, merges, special_tokens, pre_tokenizer, model, decoder, post_processor}
        (a description of the tokenizer built)
      tokenizer_text, tokenizer_ids (correct tokenizer), tokenizer_ids_gpt2_fallback
        (transformers' GGUF tokenizer, wrong: documentation only)
      probe_ids: 64 sorted token ids, numpy default_rng(20250601).choice(49152, 64, replace=False)
      prompts[k]: {name, text, ids, top5_ids[t][5], top5_logits[t][5], sixth_logit[t],
                   logsumexp[t], probe_logits[t][64]} for every position t (the logits row
                   after reading ids[0..=t]). Logits are the f32 values written as exact
                   decimal (Python repr of the f32 widened to f64). top5 sorted by logit
                   descending, ties by smaller id. sixth_logit = 6th largest logit (so a test
                   can see how close a top-5 boundary is). logsumexp computed in float64
                   over the f32 logits.
      perplexity: {text_source, bytes_used, window, tokens, predicted, windows, ids_sha256,
                   first_ids, window_nll_sums, sum_nll, mean_nll, perplexity, bits_per_byte}
        text = first 16,000 bytes of datasets/kjv-text/valid.txt cut after the last "\\n"
        within them, UTF-8; ids = the tokenizer above (no specials added); consecutive
        non-overlapping windows of 256 tokens (the last partial one kept if it has >= 2
        tokens); in each window, tokens 1..len are predicted from the window alone (no carry
        over); NLL in float64 from log_softmax of the f32 logits (in float64).
        mean_nll in nats per predicted token, perplexity = exp(mean_nll),
        bits_per_byte = sum_nll / ln 2 / bytes_used. ids_sha256 = sha256 of the ids as LE u32.
    smollm2_prompt0_last_logits.npy: float32 [49152], the full logits row of the last
    position of prompts[0].

dequant -> smollm2_dequant.json, quant_types.gguf
    smollm2_dequant.json: for token_embd.weight (Q8_0), blk.0.attn_q.weight (Q4_1),
    blk.29.ffn_down.weight (Q4_1), output_norm.weight (F32) of the SmolLM2 GGUF, dequantised
    with gguf.quants.dequantize (llama.cpp's Python reference): ggml type, shape row-major
    (outermost first, i.e. reversed GGUF ne), sum and sum of squares of all elements
    (float64 accumulation), first 16 values of row 0 and of the last row, and f32_sha256 =
    sha256 of the whole dequantised tensor as little-endian f32 in row-major order (bit exact
    if a dequantiser computes d*q (+ m) as separate f32 operations, without FMA). NB these are
    the raw GGUF tensors: attn_q/attn_k rows are still in llama.cpp's permuted order.
    quant_types.gguf: a synthetic GGUF (gguf.GGUFWriter) with one [4, 256] (row-major; GGUF ne
    [256, 4]) tensor per type F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, all quantised from the
    same source matrix (numpy default_rng(20250601).standard_normal((4, 256)), row r scaled by
    10**(r-2), plus a few outliers). F32/F16/Q8_0/Q4_0/Q4_1 are made with gguf.quants.quantize;
    gguf 0.19 cannot quantise K-quants, so Q4_K and Q6_K are made by llama.cpp's own C
    quantiser, ggml_quantize_chunk() from the libggml-base shared library bundled in
    llama-cpp-python (called with ctypes; no imatrix). The JSON holds, per tensor, the
    ggml type, shape, the source values and the dequantised values (gguf.quants.dequantize).
    The script also checks (prints) that ggml's C dequantize_row_* gives the same values and
    that gguf.quants.quantize and ggml_quantize_chunk give the same bytes for Q8_0/Q4_0/Q4_1.

crosscheck (prints only, writes nothing)
    Compares the tokenizer above with llama.cpp's own tokenizer (llama-cpp-python,
    Llama(model_path, vocab_only=True).tokenize(text, add_bos=False, special=...)), which
    implements the "smollm" pre-tokenizer, on the multilingual text, the first 200 lines of
    datasets/kjv-text/valid.txt (one at a time and joined), the perplexity slice, the prompts
    and 3,000 random strings stitched from tricky pieces (fixed seed), with control-token
    recognition on (special=True) and off (special=False, against the tokenizer built without
    added tokens), and shows where transformers' GPT-2 fallback differs.
    Result with llama-cpp-python 0.3.36 (ggml 0.25.3): all agree.

Library versions used for the committed fixtures (also printed into each fixture):
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.24.0, sentence-transformers 6.2.0,
    tokenizers 0.23.3, gguf 0.19.0, numpy 2.4.6, accelerate 1.15.0 (needed by transformers to
    load a GGUF), jinja2 3.1.6 (renders the GGUF chat template), llama-cpp-python 0.3.36 (built
    from source: CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    pip install llama-cpp-python) for the K-quants and the cross-check.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
os.environ["OMP_NUM_THREADS"] = "2"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "bllm-models", "tests", "fixtures")
MINILM_DIR = os.path.join(ROOT, "models", "minilm")
SMOL_DIR = os.path.join(ROOT, "models", "smollm2")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_PATH = os.path.join(SMOL_DIR, SMOL_FILE)
VERSES = os.path.join(ROOT, "datasets", "kjv-minilm", "verses.txt")
KJV_VALID = os.path.join(ROOT, "datasets", "kjv-text", "valid.txt")

SEED = 20250601
N_PROBE = 64
PPL_BYTES = 16_000
PPL_WINDOW = 256
MINILM_FULL_FIRST = 50
MINILM_FULL_OVER = 100

# The fixed multilingual tokenizer test text. Covers: digits with and without runs of spaces
# before them (where the smollm Digits pre-tokenizer differs from plain GPT-2 splitting),
# contractions, Latin accents, Greek, Cyrillic, CJK, Japanese kana, Arabic, emoji (with a skin
# tone modifier and a flag), code with tabs/newlines, a literal control token, blank lines,
# CRLF and trailing spaces.
TOKENIZER_TEXT = (
    "In 1611, 31,102 verses. a  1   22    333 x\t4\n"
    "Pi is 3.14159; 1,000,000 is a million; 2024-06-01T12:30Z; v1.2.3; 0x1F.\n"
    "He said: \"don't\", I'll go, we're here, it's THEIRS'S.\n"
    "Café naïve façade — Größe, übermäßig, Straße; élève à Noël.\n"
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν.\n"
    "В начале было Слово, и Слово было у Бога.\n"
    "太初有道，道与神同在。\n"
    "初めに言があった。ことばは神とともにあった。\n"
    "في البدء كان الكلمة\n"
    "Emoji: 🙂👍🏽 and 🇫🇷!\n"
    "def square(x):\n\tif x > 0:\n\t\treturn x ** 2  # ok\n\treturn -x\n\n\n"
    "<|im_start|>user\nHello<|im_end|>\r\n"
    "trailing spaces   "
)

CHAT_TEMPLATE_PROMPT0 = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PROMPTS = [
    ("chat_capital_of_france", CHAT_TEMPLATE_PROMPT0),
    ("kjv_genesis_1_1_2", "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep."),
    ("python_fibonacci", "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"),
]
MAX_PROMPT_TOKENS = 48

DEQUANT_TENSORS = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"]
SYNTH_TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]
SYNTH_SHAPE = (4, 256)


# ---------------------------------------------------------------------------------------- util

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_sha256(ids):
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


def f32(x):
    """An f32 value as the Python float (f64) holding it exactly; json writes its repr."""
    return float(np.float32(x))


def versions(*names):
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def dump_json(obj, path):
    """Pretty JSON with every innermost list of scalars on one line; deterministic."""

    def enc(o, ind):
        pad = "  " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad}  {json.dumps(k)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, (list, tuple)):
            if all(not isinstance(v, (dict, list, tuple)) for v in o):
                return "[" + ", ".join(enc(v, 0) for v in o) + "]"
            items = [f"{pad}  {enc(v, ind + 1)}" for v in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        if isinstance(o, float):
            if not math.isfinite(o):
                raise ValueError(f"non-finite float in fixture: {o}")
            return repr(o)
        if isinstance(o, (bool, int, str)) or o is None:
            return json.dumps(o, ensure_ascii=False)
        if isinstance(o, np.integer):
            return str(int(o))
        if isinstance(o, np.floating):
            return repr(float(o))
        raise TypeError(type(o))

    text = enc(obj, 0) + "\n"
    json.loads(text)  # it parses
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path):,} bytes)")


def torch_setup():
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return torch


# -------------------------------------------------------------------------------------- minilm

def read_verses():
    with open(VERSES, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    out = [line[:-1] if line.endswith("\n") else line for line in lines]
    assert len(out) == 10_000, len(out)
    return out


def part_minilm():
    torch_setup()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(MINILM_DIR, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    verses = read_verses()
    rows, full = [], []
    import logging

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)  # "tokenize is deprecated" (ST 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, text in enumerate(verses):
            ids = model.tokenize([text])["input_ids"]
            assert ids.shape[0] == 1
            ids = [int(x) for x in ids[0].tolist()]
            rows.append(f"{len(ids)} {ids_sha256(ids)[:8]}")
            if i < MINILM_FULL_FIRST or len(ids) > MINILM_FULL_OVER:
                full.append(f"= {i} " + " ".join(map(str, ids)))
            if i == 0:
                first = ids
    counts = [int(r.split()[0]) for r in rows]
    v = versions("sentence-transformers", "transformers", "tokenizers", "torch")
    header = (
        "# minilm_token_ids v1: all-MiniLM-L6-v2 (models/minilm) input_ids of each line of "
        "datasets/kjv-minilm/verses.txt (whole line incl. reference and TAB; trailing \\n stripped; "
        f"verses.txt sha256 {sha256_file(VERSES)[:16]}) from SentenceTransformer(models/minilm, device=cpu)"
        ".tokenize([line]) (max_seq_length 256, truncation, no padding). Line 2+i = verse i (0-based): "
        "'<count> <first 8 hex of sha256(ids as LE u32)>'; then '= <i> <ids...>' for i < 50 and every count > 100. "
        f"Made by scripts/make_model_references.py minilm; max count {max(counts)}; "
        + " ".join(f"{k} {val}" for k, val in v.items())
    )
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, "minilm_token_ids.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.write("\n".join(rows) + "\n")
        f.write("\n".join(full) + "\n")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path):,} bytes)")
    print(f"minilm: {len(verses)} verses; token counts min {min(counts)} max {max(counts)} "
          f"mean {sum(counts) / len(counts):.2f}; > 256: {sum(c > 256 for c in counts)}; "
          f"== 256 (possibly truncated): {sum(c == 256 for c in counts)}; "
          f"> {MINILM_FULL_OVER}: {sum(c > MINILM_FULL_OVER for c in counts)}; first ids {first}")
    # Untruncated lengths, to be sure nothing hit the 256 limit.
    raw = model.tokenizer(verses, add_special_tokens=True, truncation=False)["input_ids"]
    print(f"minilm: untruncated max length {max(len(r) for r in raw)}")
    # The bare `tokenizers` library on models/minilm/tokenizer.json gives the same ids once its
    # built-in Fixed(128) padding and 128 truncation are replaced by ST's settings.
    from tokenizers import Tokenizer

    bare = Tokenizer.from_file(os.path.join(MINILM_DIR, "tokenizer.json"))
    default_len = len(bare.encode(verses[0]).ids)
    bare.no_padding()
    bare.enable_truncation(256)
    same = all(bare.encode(t).ids == [int(x) for x in r] for t, r in zip(verses, raw))
    print(f"minilm: bare tokenizers (no_padding, truncation 256) == sentence-transformers on all verses: {same}; "
          f"with tokenizer.json's own padding/truncation verse 0 has {default_len} ids")
    assert same


# ------------------------------------------------------------------------------ smollm2 shared

def gguf_reader():
    import gguf

    return gguf.GGUFReader(SMOL_PATH)


def build_smollm_tokenizer(reader=None, specials=True):
    """SmolLM2's tokenizer rebuilt with `tokenizers` from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    r = reader or gguf_reader()
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents())
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    merges_raw = list(r.fields["tokenizer.ggml.merges"].contents())
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(tokens) == 49152 and len(set(tokens)) == len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for m in merges_raw:
        a, b = m.split(" ")
        assert a in vocab and b in vocab and (a + b) in vocab, m
        merges.append((a, b))
    special = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    assert [i for i, _ in special] == list(range(17)), special
    assert all(ty == 1 for ty in types[17:])
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False,
                     fuse_unk=False, dropout=None, ignore_merges=False)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    if specials:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False, single_word=False,
                                          lstrip=False, rstrip=False) for _, t in special])
    assert tk.get_vocab_size(with_added_tokens=True) == 49152
    return tk, {"vocab_size": len(tokens), "merges": len(merges), "special_tokens": [t for _, t in special]}


def encode(tk, text):
    return tk.encode(text, add_special_tokens=False).ids


def transformers_gguf_tokenizer():
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE)


def hf_encode(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def ppl_text():
    with open(KJV_VALID, "rb") as f:
        raw = f.read(PPL_BYTES)
    cut = raw.rfind(b"\n")
    assert cut > 0
    raw = raw[: cut + 1]
    return raw.decode("utf-8"), len(raw)


def render_chat_template(reader):
    import jinja2

    tmpl = reader.fields["tokenizer.chat_template"].contents()
    env = jinja2.Environment()
    return env.from_string(tmpl).render(
        messages=[{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)


# ------------------------------------------------------------------------------------- smollm2

def load_teacher():
    torch = torch_setup()
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(
            SMOL_DIR, gguf_file=SMOL_FILE, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    return torch, model


def check_teacher_weights(model, reader):
    """The teacher's weights are the gguf-dequantised GGUF tensors (q/k un-permuted)."""
    import gguf

    t = {x.name: x for x in reader.tensors}

    def deq(name):
        x = t[name]
        return gguf.quants.dequantize(x.data, x.tensor_type).reshape([int(n) for n in reversed(x.shape)])

    emb = model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(emb, deq("token_embd.weight"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    q = deq("blk.0.attn_q.weight")  # [576, 576], rows permuted by llama.cpp's converter
    n_head = 9
    unperm = q.reshape(n_head, 32, 2, 576).swapaxes(1, 2).reshape(576, 576)
    assert np.array_equal(model.model.layers[0].self_attn.q_proj.weight.detach().numpy(), unperm)
    k = deq("blk.0.attn_k.weight")  # [192, 576]
    unperm = k.reshape(3, 32, 2, 576).swapaxes(1, 2).reshape(192, 576)
    assert np.array_equal(model.model.layers[0].self_attn.k_proj.weight.detach().numpy(), unperm)
    v = deq("blk.0.attn_v.weight")
    assert np.array_equal(model.model.layers[0].self_attn.v_proj.weight.detach().numpy(), v)
    assert np.array_equal(model.model.norm.weight.detach().numpy(), deq("output_norm.weight"))
    print("smollm2: teacher weights == gguf.quants.dequantize of the GGUF (q/k rows un-permuted)")


def part_smollm2():
    reader = gguf_reader()
    tk, tinfo = build_smollm_tokenizer(reader)
    hf_tok = transformers_gguf_tokenizer()

    tok_ids = encode(tk, TOKENIZER_TEXT)
    tok_fallback = hf_encode(hf_tok, TOKENIZER_TEXT)
    assert tk.decode(tok_ids, skip_special_tokens=False) == TOKENIZER_TEXT
    assert 1 in tok_ids and 2 in tok_ids

    rendered = render_chat_template(reader)
    assert rendered == CHAT_TEMPLATE_PROMPT0, repr(rendered)

    rng = np.random.default_rng(SEED)
    probe_ids = sorted(int(x) for x in rng.choice(49152, N_PROBE, replace=False))

    torch, model = load_teacher()
    check_teacher_weights(model, reader)
    cfg = model.config

    prompts = []
    last0 = None
    for name, text in PROMPTS:
        ids = encode(tk, text)
        assert 2 <= len(ids) <= MAX_PROMPT_TOKENS, (name, len(ids))
        with torch.inference_mode():
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()
        assert logits.shape == (len(ids), 49152) and logits.dtype == np.float32
        if last0 is None:
            last0 = logits[-1].copy()
        p = {"name": name, "text": text, "ids": ids, "top5_ids": [], "top5_logits": [],
             "sixth_logit": [], "logsumexp": [], "probe_logits": []}
        for row in logits:
            order = np.lexsort((np.arange(row.size), -row.astype(np.float64)))[:6]
            p["top5_ids"].append([int(i) for i in order[:5]])
            p["top5_logits"].append([f32(row[i]) for i in order[:5]])
            p["sixth_logit"].append(f32(row[order[5]]))
            r64 = row.astype(np.float64)
            mx = r64.max()
            p["logsumexp"].append(float(mx + np.log(np.exp(r64 - mx).sum())))
            p["probe_logits"].append([f32(row[i]) for i in probe_ids])
        prompts.append(p)
        print(f"smollm2: prompt {name}: {len(ids)} tokens, last top5 {p['top5_ids'][-1]}"
              f" -> {tk.decode(p['top5_ids'][-1][:1])!r}")

    text, nbytes = ppl_text()
    ids = encode(tk, text)
    sums, predicted = [], 0
    for s in range(0, len(ids), PPL_WINDOW):
        w = ids[s: s + PPL_WINDOW]
        if len(w) < 2:
            continue
        with torch.inference_mode():
            lg = model(torch.tensor([w], dtype=torch.long)).logits[0].float().numpy()
        lp = lg.astype(np.float64)
        mx = lp.max(axis=1, keepdims=True)
        lse = (mx + np.log(np.exp(lp - mx).sum(axis=1, keepdims=True)))[:, 0]
        tgt = np.asarray(w[1:])
        nll = lse[:-1] - lp[np.arange(len(w) - 1), tgt]
        sums.append(float(nll.sum()))
        predicted += len(w) - 1
    sum_nll = float(sum(sums))
    mean_nll = sum_nll / predicted
    ppl = {
        "text_source": "first 16000 bytes of datasets/kjv-text/valid.txt, cut after the last '\\n' within them",
        "valid_txt_sha256": sha256_file(KJV_VALID),
        "bytes_used": nbytes,
        "window": PPL_WINDOW,
        "tokens": len(ids),
        "predicted": predicted,
        "windows": len(sums),
        "ids_sha256": ids_sha256(ids),
        "first_ids": ids[:64],
        "last_ids": ids[-16:],
        "window_nll_sums": sums,
        "sum_nll": sum_nll,
        "mean_nll": mean_nll,
        "perplexity": math.exp(mean_nll),
        "bits_per_byte": sum_nll / math.log(2) / nbytes,
    }
    print(f"smollm2: perplexity slice {nbytes} bytes, {len(ids)} tokens, {len(sums)} windows, "
          f"{predicted} predicted: mean_nll {mean_nll:.6f} ppl {ppl['perplexity']:.4f} bpb {ppl['bits_per_byte']:.6f}")

    out = {
        "what": "SmolLM2-135M-Instruct reference: transformers f32 forward of the dequantised Q4_1 GGUF "
                "(the float teacher) and the correct (smollm pre-tokenizer) tokenizer. Made by "
                "scripts/make_model_references.py smollm2; see its docstring.",
        "gguf_file": f"models/smollm2/{SMOL_FILE}",
        "gguf_sha256": sha256_file(SMOL_PATH),
        "versions": versions("torch", "transformers", "tokenizers", "gguf", "numpy", "accelerate", "jinja2"),
        "model": {
            "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "rope_theta": 100000.0, "rms_norm_eps": float(cfg.rms_norm_eps), "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings), "attn_implementation": "eager",
            "dtype": "float32",
        },
        "notes": [
            "transformers un-permutes the GGUF attn_q/attn_k rows (llama.cpp's converter permutes them for "
            "its interleaved-pair RoPE): hf_row = gguf rows reshaped [n_head, 2, head_dim/2, d] -> swap axes 1,2; "
            "the teacher then applies HF rotate_half RoPE. A loader that keeps GGUF order must rotate adjacent pairs.",
            "rms_norm_eps is the GGUF f32 1e-5 read as f64 (9.999999747378752e-06).",
            "lm_head is tied to token_embd (Q8_0 dequantised).",
            "Logits: exact f32 values. top5 ties broken by smaller id. logsumexp in float64.",
            "tokenizer_ids: control tokens recognised in the text (<|im_start|> -> 1); no BOS/EOS added.",
        ],
        "tokenizer": dict(tinfo, pre_tokenizer="Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)]",
                          model="BPE(vocab=GGUF tokens, merges=GGUF merges, no unk, no byte_fallback)",
                          decoder="ByteLevel", post_processor=None),
        "tokenizer_text": TOKENIZER_TEXT,
        "tokenizer_ids": tok_ids,
        "tokenizer_ids_gpt2_fallback": tok_fallback,
        "probe_ids_seed": f"numpy.random.default_rng({SEED}).choice(49152, {N_PROBE}, replace=False), sorted",
        "probe_ids": probe_ids,
        "prompts": prompts,
        "perplexity": ppl,
    }
    os.makedirs(FIXTURES, exist_ok=True)
    dump_json(out, os.path.join(FIXTURES, "smollm2_reference.json"))
    npy = os.path.join(FIXTURES, "smollm2_prompt0_last_logits.npy")
    np.save(npy, np.ascontiguousarray(last0, dtype="<f4"))
    print(f"wrote {os.path.relpath(npy, ROOT)} ({os.path.getsize(npy):,} bytes)")
    diff = [i for i, (a, b) in enumerate(zip(tok_ids, tok_fallback)) if a != b]
    print(f"smollm2: tokenizer text {len(tok_ids)} ids (correct) vs {len(tok_fallback)} (gpt2 fallback); "
          f"first difference at {diff[0] if diff else None}")


# ------------------------------------------------------------------------------------- dequant

def ggml_lib():
    """llama.cpp's libggml-base from llama-cpp-python, with the quantise/dequantise entry points."""
    import ctypes
    import glob

    import llama_cpp

    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    cands = sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))
    if not cands:
        raise RuntimeError(f"no libggml-base.so in {libdir}")
    lib = ctypes.CDLL(cands[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_quantize(lib, src, qtype):
    import gguf

    src = np.ascontiguousarray(src, dtype=np.float32)
    nrows, n_per_row = src.shape
    byte_shape = gguf.quants.quant_shape_to_byte_shape(src.shape, qtype)
    dst = np.zeros(byte_shape, dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, nrows, n_per_row, None)
    assert n == dst.size, (n, dst.size)
    return dst


def ggml_dequantize(lib, data, qtype, shape):
    import ctypes

    fn = getattr(lib, "dequantize_row_q" + qtype.name[1:])  # e.g. dequantize_row_q4_K
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    data = np.ascontiguousarray(data)
    out = np.zeros(shape, dtype=np.float32)
    fn(data.ctypes.data, out.ctypes.data, out.size)
    return out


def synth_source():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal(SYNTH_SHAPE)
    x *= (10.0 ** (np.arange(SYNTH_SHAPE[0]) - 2))[:, None]
    x[0, 7] = 0.5  # outliers: a block whose scale is set by one value
    x[1, 100] = -3.0
    x[2, 255] = 25.0
    x[3, 0:32] = 0.0  # an all-zero block (scale 0)
    return x.astype(np.float32)


def part_dequant(skip_kquants=False):
    import gguf

    reader = gguf_reader()
    tensors = {t.name: t for t in reader.tensors}
    real, real_data = {}, {}
    for name in DEQUANT_TENSORS:
        t = tensors[name]
        shape = [int(n) for n in reversed(t.shape)]
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32, copy=False)
        x2 = x.reshape(shape[0], -1) if len(shape) > 1 else x.reshape(1, -1)
        real[name] = {
            "ggml_type": t.tensor_type.name,
            "shape": shape,
            "gguf_ne": [int(n) for n in t.shape],
            "sum": float(x.astype(np.float64).sum()),
            "sum_sq": float(np.square(x.astype(np.float64)).sum()),
            "row0_first16": [f32(v) for v in x2[0, :16]],
            "last_row_first16": [f32(v) for v in x2[-1, :16]],
            "f32_sha256": hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest(),
        }
        print(f"dequant: {name} {t.tensor_type.name} {shape} sum {real[name]['sum']:.6f}")
        real_data[name] = (t, x)

    src = synth_source()
    Q = gguf.GGMLQuantizationType
    lib = None
    if not skip_kquants:
        try:
            lib = ggml_lib()
        except Exception as e:  # noqa: BLE001
            sys.exit(f"dequant: K-quants need llama-cpp-python's libggml-base ({e}); "
                     "install it or pass --skip-kquants (which writes a different quant_types.gguf)")
    if lib is not None:
        for name, (t, x) in real_data.items():
            if t.tensor_type.name != "F32":
                c = ggml_dequantize(lib, t.data, t.tensor_type, x.shape)
                print(f"dequant: {name}: ggml dequantize_row == gguf.quants.dequantize (bit exact): {np.array_equal(c, x)}")
    types = [n for n in SYNTH_TYPES if not (skip_kquants and n.endswith("_K"))]
    writer_path = os.path.join(FIXTURES, "quant_types.gguf")
    os.makedirs(FIXTURES, exist_ok=True)
    w = gguf.GGUFWriter(writer_path, arch="bllm-quant-test")
    w.add_name("BinaryLLM quantisation-type test tensors")
    w.add_description("one [4, 256] row-major tensor (GGUF ne [256, 4]) per ggml type, made by "
                      "scripts/make_model_references.py dequant")
    synth = {}
    for name in types:
        qt = Q[name]
        if name.endswith("_K"):
            data = ggml_quantize(lib, src, qt)
            how = "llama.cpp ggml_quantize_chunk (libggml-base, no imatrix)"
        else:
            data = gguf.quants.quantize(src, qt)
            how = "gguf.quants.quantize"
            if lib is not None and name not in ("F32", "F16"):
                same = np.array_equal(data, ggml_quantize(lib, src, qt))
                print(f"dequant: {name}: gguf.quants.quantize bytes == ggml_quantize_chunk bytes: {same}")
        deq = gguf.quants.dequantize(data, qt).reshape(SYNTH_SHAPE).astype(np.float32, copy=False)
        if lib is not None and name not in ("F32", "F16"):
            c = ggml_dequantize(lib, data, qt, SYNTH_SHAPE)
            print(f"dequant: {name}: ggml dequantize_row == gguf.quants.dequantize: "
                  f"{np.array_equal(c, deq)} (max |diff| {float(np.abs(c - deq).max()):.3g})")
        tname = name.lower()
        w.add_tensor(tname, data, raw_dtype=qt) if name not in ("F32", "F16") else w.add_tensor(tname, data)
        synth[tname] = {
            "ggml_type": name,
            "shape": list(SYNTH_SHAPE),
            "gguf_ne": list(reversed(SYNTH_SHAPE)),
            "quantized_by": how,
            "bytes": int(data.nbytes),
            "max_abs_err_vs_source": f32(np.abs(deq - src).max()),
            "dequantized": [[f32(v) for v in row] for row in deq],
        }
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = os.path.getsize(writer_path)
    assert size < 40 * 1024, size
    print(f"wrote {os.path.relpath(writer_path, ROOT)} ({size:,} bytes)")
    # Read back: what a reader sees equals what we wrote.
    rb = gguf.GGUFReader(writer_path)
    for t in rb.tensors:
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(SYNTH_SHAPE)
        assert [f32(v) for v in back.ravel()] == [v for row in synth[t.name]["dequantized"] for v in row], t.name

    v = versions("gguf", "numpy")
    if lib is not None:
        v.update(versions("llama-cpp-python"))
    out = {
        "what": "Dequantisation references (gguf.quants.dequantize, llama.cpp's Python reference). Made by "
                "scripts/make_model_references.py dequant; see its docstring.",
        "versions": v,
        "smollm2": {
            "gguf_file": f"models/smollm2/{SMOL_FILE}",
            "gguf_sha256": sha256_file(SMOL_PATH),
            "note": "shape is row-major (outermost first) = reversed GGUF ne; sums in float64; f32_sha256 over "
                    "the dequantised tensor as LE f32, row-major; attn_q rows are in GGUF (permuted) order",
            "tensors": real,
        },
        "quant_types": {
            "gguf_file": "crates/bllm-models/tests/fixtures/quant_types.gguf",
            "gguf_sha256": sha256_file(writer_path),
            "source": f"numpy.random.default_rng({SEED}).standard_normal((4, 256)), row r times 10**(r-2), "
                      "then x[0,7]=0.5, x[1,100]=-3, x[2,255]=25, x[3,0:32]=0, cast to f32",
            "source_values": [[f32(v) for v in row] for row in src],
            "kquants_skipped": bool(skip_kquants),
            "tensors": synth,
        },
    }
    dump_json(out, os.path.join(FIXTURES, "smollm2_dequant.json"))


# ---------------------------------------------------------------------------------- crosscheck

def part_crosscheck():
    from llama_cpp import Llama

    import llama_cpp

    tk, _ = build_smollm_tokenizer()
    tk_plain, _ = build_smollm_tokenizer(specials=False)
    hf = transformers_gguf_tokenizer()
    llm = Llama(model_path=SMOL_PATH, vocab_only=True, verbose=False)
    print(f"llama-cpp-python {llama_cpp.__version__}")

    def ll(text, special):
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def show(ids):
        return [tk.decode([i]) for i in ids]

    def cmp(label, a, b):
        ok = a == b
        print(f"  {label}: {'AGREE' if ok else 'DIFFER'} ({len(a)} vs {len(b)} ids)")
        if not ok:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"    first difference at {k}: {a[k:k + 8]} {show(a[k:k + 8])} vs {b[k:k + 8]} {show(b[k:k + 8])}")
        return ok

    print("multilingual tokenizer text:")
    ours = encode(tk, TOKENIZER_TEXT)
    cmp("ours(specials) vs llama.cpp(special=True)", ours, ll(TOKENIZER_TEXT, True))
    cmp("ours(no specials) vs llama.cpp(special=False)", encode(tk_plain, TOKENIZER_TEXT), ll(TOKENIZER_TEXT, False))
    cmp("ours(specials) vs transformers GGUF tokenizer", ours, hf_encode(hf, TOKENIZER_TEXT))
    for s in ["a  1   22    333", "x  2", "In 1611, 31,102 verses.", "trailing spaces   "]:
        print(f"  {s!r}: ours {encode(tk, s)} {show(encode(tk, s))}")
        print(f"  {' ' * len(repr(s))}  llama {ll(s, True)}")
        print(f"  {' ' * len(repr(s))}  hf    {hf_encode(hf, s)} {show(hf_encode(hf, s))}")

    with open(KJV_VALID, encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(200)]
    bad_ll = [i for i, s in enumerate(lines) if encode(tk, s) != ll(s, False)]
    bad_hf = [i for i, s in enumerate(lines) if encode(tk, s) != hf_encode(hf, s)]
    print(f"kjv valid.txt first 200 lines, one at a time: llama.cpp differs on {len(bad_ll)} {bad_ll[:10]}, "
          f"transformers fallback differs on {len(bad_hf)} {bad_hf[:10]}")
    block = "\n".join(lines) + "\n"
    cmp("200 lines joined: ours vs llama.cpp", encode(tk, block), ll(block, False))
    cmp("200 lines joined: ours vs transformers", encode(tk, block), hf_encode(hf, block))
    text, _ = ppl_text()
    cmp("perplexity slice: ours vs llama.cpp", encode(tk, text), ll(text, False))
    for name, p in PROMPTS:
        cmp(f"prompt {name}: ours vs llama.cpp(special=True)", encode(tk, p), ll(p, True))
    # Random strings stitched from pieces that stress the pre-tokenizers (fixed seed).
    rng = np.random.default_rng(SEED)
    pieces = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "0", "12", "345", "6789", "a", "A", "ab", "the",
              " the", "'s", "'T", "'ll", "don't", ",", ".", "...", "-", "__", "#", "é", "ß", "Ω", "λόγος",
              "Слово", "道", "言", "كان", "🙂", "👍🏽", "🇫🇷", "\u00a0", "\u2003", "\u200b", "x1", "1x",
              "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start", "|>"]
    bad = 0
    for _ in range(3000):
        s = "".join(pieces[int(k)] for k in rng.integers(0, len(pieces), int(rng.integers(1, 24))))
        if encode(tk, s) != ll(s, True) or encode(tk_plain, s) != ll(s, False):
            bad += 1
            if bad <= 3:
                print(f"  fuzz mismatch {s!r}: ours {encode(tk, s)} llama {ll(s, True)}")
    print(f"fuzz: 3000 random strings (specials on and off): {bad} mismatches vs llama.cpp")
    # Round trip through llama.cpp's detokeniser too.
    back = llm.detokenize(ours, special=True).decode("utf-8")
    print(f"llama.cpp detokenize(our ids) == text: {back == TOKENIZER_TEXT}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", metavar="PART",
                    help="minilm, smollm2, dequant, crosscheck (default: minilm smollm2 dequant)")
    ap.add_argument("--skip-kquants", action="store_true",
                    help="leave Q4_K/Q6_K out of quant_types.gguf (no llama-cpp-python needed)")
    args = ap.parse_args()
    parts = args.parts or ["minilm", "smollm2", "dequant"]
    for p in parts:
        if p not in ("minilm", "smollm2", "dequant", "crosscheck"):
            ap.error(f"unknown part {p!r}")
    for p in parts:
        if p == "minilm":
            part_minilm()
        elif p == "smollm2":
            part_smollm2()
        elif p == "dequant":
            part_dequant(args.skip_kquants)
        elif p == "crosscheck":
            part_crosscheck()


if __name__ == "__main__":
    main()
