"""Model-scorer engine vs a plain hand-written torch loop.

For each task (``causal_lm_loss``, ``encoder_score``, ``generate``) and two text
sets (``equal``: every document cut to exactly ``--max-length`` tokens;
``varied``: real documents of mixed lengths, head-truncated at
``--max-length``) it times

* ``loop``: tokenise a static batch in input order with padding, run the model,
  compute the same outputs; batch size = the best of a small sweep on a subset;
* ``engine``: ``thresher.scorers.models`` with its default token budget (sorting by
  length, token-budget packing),

on the same model object (same weights, dtype and device), and prints docs/s,
tokens/s (document tokens, not padding), engine/loop ratio, padding waste and
the largest difference between the two outputs.

Models are built from configs with random weights (nothing is downloaded);
tokenizers are trained at start on the corpus sample with ``tokenizers``:

    --model-size tiny        Llama 2×64 + BERT 2×64        (CPU smoke size)
    --model-size bert-base   Llama 12×768 (~110M) + BERT-base
    --model-size llama-0.4b  Llama 24×1024 (~0.37B) + BERT-large

    python benchmarks/model_scorers.py --device cpu --model-size tiny
    python benchmarks/model_scorers.py --device cuda --model-size llama-0.4b

The builders (``train_bpe_tokenizer``, ``train_wordpiece_tokenizer``,
``build_causal_lm``, ``build_encoder``) are also used by the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# --------------------------------------------------------------------------- builders
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "causal": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4),
        "encoder": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "vocab": {"causal": 8192, "encoder": 8192},
    },
    "bert-base": {
        "causal": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=12),
        "encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "vocab": {"causal": 32000, "encoder": 30522},
    },
    "llama-0.4b": {
        "causal": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=16),
        "encoder": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        "vocab": {"causal": 32000, "encoder": 30522},
    },
}


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 2000, max_length: int = 2048):
    """Byte-level BPE with ``<pad>``, ``<s>``, ``</s>`` (a causal-LM tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=max_length)


def train_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int = 2000, max_length: int = 512):
    """BERT-style uncased WordPiece with ``[CLS] … [SEP]`` post-processing."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def _construct(factory, device: Optional[str]):
    if device and device != "cpu":
        with torch.device(device):
            return factory()
    return factory()


def build_causal_lm(tokenizer, size: str = "tiny", max_positions: int = 2048, seed: int = 0,
                    device: Optional[str] = None, arch: str = "llama", **overrides: Any):
    """A random-weight causal LM sized by ``SIZES[size]`` (``arch``: llama, mistral, gpt2)."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
    )

    torch.manual_seed(seed)
    dims = dict(SIZES[size]["causal"])
    dims.update(overrides)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=dims["hidden_size"], n_layer=dims["num_hidden_layers"],
                         n_head=dims["num_attention_heads"], n_inner=dims["intermediate_size"],
                         n_positions=max_positions, **common)
    elif arch == "mistral":
        cfg = MistralConfig(max_position_embeddings=max_positions, **dims, **common)
    else:
        cfg = LlamaConfig(max_position_embeddings=max_positions, **dims, **common)
    model = _construct(lambda: AutoModelForCausalLM.from_config(cfg), device)
    return model.eval()


def build_encoder(tokenizer, size: str = "tiny", max_positions: int = 512, seed: int = 0,
                  device: Optional[str] = None, num_labels: Optional[int] = None, **overrides: Any):
    """A random BERT (bare, or with a sequence-classification head when ``num_labels``)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    dims = dict(SIZES[size]["encoder"])
    dims.update(overrides)
    cfg = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions,
                     pad_token_id=tokenizer.pad_token_id, **dims)
    if num_labels is not None:
        cfg.num_labels = num_labels
        cfg.architectures = ["BertForSequenceClassification"]
        model = _construct(lambda: AutoModelForSequenceClassification.from_config(cfg), device)
    else:
        model = _construct(lambda: AutoModel.from_config(cfg), device)
    return model.eval()


# --------------------------------------------------------------------------- data
DEFAULT_CORPORA = ("wiki_summaries", "handbook", "fortunes", "web_sample")
MIX = {"fortunes": 0.35, "wiki_summaries": 0.35, "handbook": 0.15, "web_sample": 0.15}


def find_corpora(paths: Optional[Sequence[str]]) -> dict[str, str]:
    if paths:
        return {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    for base in (os.path.join(_ROOT, "bench-out", "corpora"), os.path.join(os.path.dirname(_ROOT), "shared", "corpora")):
        found = {n: os.path.join(base, n + ".parquet") for n in DEFAULT_CORPORA
                 if os.path.isfile(os.path.join(base, n + ".parquet"))}
        if found:
            return found
    raise SystemExit("no corpora found: pass --corpora FILE.parquet ...")


def load_texts(corpora: dict[str, str], n: int, seed: int) -> list[str]:
    """``n`` texts drawn from the corpora by ``MIX`` weights (others equally)."""
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pools = {k: [t for t in pq.read_table(p, columns=["text"]).column("text").to_pylist() if t]
             for k, p in corpora.items()}
    weights = {k: MIX.get(k, 1.0 / len(pools)) for k in pools}
    total = sum(weights.values())
    out: list[str] = []
    for k, pool in pools.items():
        m = min(len(pool), round(n * weights[k] / total))
        out += rng.sample(pool, m)
    rng.shuffle(out)
    return out[:n]


# --------------------------------------------------------------------------- baselines
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def loop_causal(model, tok, texts, bs, L, dev, dtype, bos_id):
    """Plain loop: batches in input order, padding to the batch's longest, head truncation."""
    import torch.nn.functional as F

    outs, real, padded = [], 0, 0
    ac = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(dev.type, enabled=False)
    for i in range(0, len(texts), bs):
        enc = tok(texts[i:i + bs], add_special_tokens=False, truncation=True, max_length=L - 1, padding=True,
                  return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ids = torch.cat([torch.full((ids.shape[0], 1), bos_id, dtype=ids.dtype), ids], 1).to(dev)
        mask = torch.cat([torch.ones((mask.shape[0], 1), dtype=mask.dtype), mask], 1).to(dev)
        with torch.inference_mode(), ac:
            logits = model(input_ids=ids, attention_mask=mask).logits
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
            outs.append((nll * mask[:, 1:]).sum(1).double())
        real += int(mask.sum())
        padded += mask.numel()
    res = torch.cat(outs).cpu().numpy()
    return res, real, padded


def loop_encoder(model, head, tok, texts, bs, L, dev, dtype):
    outs, real, padded = [], 0, 0
    ac = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(dev.type, enabled=False)
    for i in range(0, len(texts), bs):
        enc = tok(texts[i:i + bs], truncation=True, max_length=L, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        with torch.inference_mode(), ac:
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            pooled = (h.float() * m).sum(1) / m.sum(1)
        with torch.inference_mode():
            outs.append(head(pooled.float()))
        real += int(mask.sum())
        padded += mask.numel()
    return torch.cat(outs).float().cpu().numpy(), real, padded


def loop_generate(model, tok, prompts, bs, max_new, dev, dtype, pad_id):
    from transformers import GenerationConfig

    outs, real, padded = [], 0, 0
    tok.padding_side = "left"
    ac = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(dev.type, enabled=False)
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=pad_id,
                           eos_token_id=tok.eos_token_id)
    for i in range(0, len(prompts), bs):
        enc = tok(prompts[i:i + bs], padding=True, return_tensors="pt", add_special_tokens=True)
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        with torch.inference_mode(), ac:
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        outs += tok.batch_decode(out[:, ids.shape[1]:].cpu().tolist(), skip_special_tokens=True)
        real += int(mask.sum()) + max_new * ids.shape[0]
        padded += (ids.shape[1] + max_new) * ids.shape[0]
    tok.padding_side = "right"
    return outs, real, padded


# --------------------------------------------------------------------------- runner
def _time(fn, dev):
    _sync(dev)
    t0 = time.perf_counter()
    r = fn()
    _sync(dev)
    return r, time.perf_counter() - t0


def _sweep(run_loop, subset, sizes, dev):
    best, best_rate, rates = None, -1.0, {}
    for bs in sizes:
        run_loop(subset[:bs], bs)  # warm-up at this shape
        _, dt = _time(lambda: run_loop(subset, bs), dev)
        rates[bs] = len(subset) / dt
        if rates[bs] > best_rate:
            best, best_rate = bs, rates[bs]
    return best, rates


def _count_tokens(tok, texts, L, specials):
    enc = tok(texts, add_special_tokens=specials, truncation=True, max_length=L, verbose=False)["input_ids"]
    return sum(len(x) for x in enc)


def equal_length_texts(tok, texts, L, n):
    """Texts cut (by char offsets) to exactly ``L`` tokens; only texts that have ``L``."""
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for t, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) > L + 8:
            cut = t[:offs[L - 1][1]]
            if len(tok(cut, add_special_tokens=False)["input_ids"]) == L:
                out.append(cut)
        if len(out) >= n:
            break
    return out


def run(args) -> list[dict[str, Any]]:
    from thresher.scorers.models import EncoderHead, Engine, LoadedModel
    from thresher.scorers.models.tasks import CausalLMLoss, EncoderScore, Generate

    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.model_size]
    cuda = dev.type == "cuda"
    L = args.max_length or (256 if args.model_size == "tiny" else 512)
    n = args.docs or (400 if not cuda else {"tiny": 4000, "bert-base": 4000, "llama-0.4b": 2000}[args.model_size])
    sweep_sizes = [int(x) for x in (args.batch_sizes or ("8,16,32,64" if not cuda else "16,32,64,128,256")).split(",")]
    tasks = args.tasks.split(",")
    t_start = time.perf_counter()

    corpora = find_corpora(args.corpora)
    pool = load_texts(corpora, max(n * 3, 3000), args.seed)
    varied = pool[:n]
    tok_train = pool[: min(len(pool), 6000)]
    print(f"# device={dev} size={args.model_size} L={L} docs={n} corpora={sorted(corpora)} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    results: list[dict[str, Any]] = []

    def engine_for() -> Engine:
        return Engine(device=str(dev), dtype=args.dtype, max_tokens_per_batch=args.max_tokens_per_batch)

    def record(task, scen, mode, ndocs, tokens, dt, padded_real, padded_all, bs, diff=None):
        row = dict(task=task, set=scen, mode=mode, docs=ndocs, seconds=round(dt, 3),
                   docs_per_s=round(ndocs / dt, 1), tokens_per_s=round(tokens / dt, 1),
                   padding_waste=round(1 - padded_real / padded_all, 3) if padded_all else 0.0,
                   batch=bs, max_diff=diff)
        results.append(row)
        return row

    def compare(task, scen, texts, loop_fn, engine_fn, specials, tok, diff_fn, sizes=sweep_sizes):
        sub = texts[: min(len(texts), max(sizes) * 4)]
        best, rates = _sweep(loop_fn, sub, sizes, dev)
        print(f"#   sweep {task}/{scen}: " + ", ".join(f"bs{k}={v:.1f}/s" for k, v in rates.items()), flush=True)
        tokens = _count_tokens(tok, texts, L, specials)
        engine_fn(texts[:32])  # warm-up
        # loop and engine alternate; the best of `repeats` runs of each counts (shared machines are noisy)
        lts, ets = [], []
        for _ in range(args.repeats):
            (lres, lreal, lpad), ldt = _time(lambda: loop_fn(texts, best), dev)
            (eres, st), edt = _time(lambda: engine_fn(texts), dev)
            lts.append(ldt)
            ets.append(edt)
        lrow = record(task, scen, "loop", len(texts), tokens, min(lts), lreal, lpad, best)
        erow = record(task, scen, "engine", len(texts), tokens, min(ets), st.processed_tokens, st.padded_tokens,
                      f"budget {st_budget[0]}", diff_fn(lres, eres))
        erow["ratio"] = round(erow["docs_per_s"] / lrow["docs_per_s"], 2)
        lrow["runs_s"], erow["runs_s"] = [round(x, 3) for x in lts], [round(x, 3) for x in ets]
        print(json.dumps(lrow), flush=True)
        print(json.dumps(erow), flush=True)

    st_budget = [None]
    ac_dtype = Engine(device=str(dev), dtype=args.dtype).compute_dtype

    # ---------------------------------------------------------------- causal LM
    if "causal_lm_loss" in tasks or "generate" in tasks:
        t0 = time.perf_counter()
        ctok = train_bpe_tokenizer(tok_train, size["vocab"]["causal"], max_length=max(2048, L))
        cmodel = build_causal_lm(ctok, args.model_size, max_positions=max(2048, L), seed=args.seed,
                                 device=str(dev) if cuda else None)
        cmodel.to(dev)
        if cuda and ac_dtype != torch.float32:
            cmodel.to(ac_dtype)
        lm = LoadedModel.wrap(cmodel, ctok)
        print(f"# causal LM: {sum(p.numel() for p in cmodel.parameters()) / 1e6:.1f}M params, "
              f"vocab {len(ctok)}, built in {time.perf_counter() - t0:.1f}s", flush=True)

    if "causal_lm_loss" in tasks:
        eq = equal_length_texts(ctok, pool, L - 1, n)

        def loop_fn(texts, bs):
            return loop_causal(cmodel, ctok, texts, bs, L, dev, ac_dtype, ctok.bos_token_id)

        def engine_fn(texts):
            eng = engine_for()
            st_budget[0] = eng.max_tokens_per_batch
            task = CausalLMLoss(lm, engine=eng, max_length=L, truncation="head")
            cols = task(texts)
            return cols["lm_loss_sum"].to_numpy(), task.stats

        def diff(a, b):
            return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0)))

        for scen, texts in (("equal", eq), ("varied", varied)):
            if texts:
                compare("causal_lm_loss", scen, texts, loop_fn, engine_fn, False, ctok, diff)

    if "generate" in tasks:
        gn = args.gen_docs or (48 if not cuda else 256)
        gtexts = varied[:gn]
        gL = min(L, 256)
        gen = Generate(lm, engine=engine_for(), max_new_tokens=args.max_new_tokens, template="none",
                       max_length=gL)
        prompts = [gen.render(t) for t in gtexts]

        def gloop(texts, bs):
            return loop_generate(cmodel, ctok, [gen.render(t) for t in texts], bs, args.max_new_tokens, dev,
                                 ac_dtype, ctok.pad_token_id)

        def gengine(texts):
            eng = engine_for()
            st_budget[0] = eng.max_tokens_per_batch
            task = Generate(lm, engine=eng, max_new_tokens=args.max_new_tokens, template="none", max_length=gL)
            return task(texts)["generated"].to_pylist(), task.stats

        def gdiff(a, b):
            return round(sum(x != y for x, y in zip(a, b)) / max(1, len(a)), 3)  # fraction differing

        # the loop truncates prompts the same way: pre-cut the texts to gL tokens
        cut = []
        for t in gtexts:
            ids = ctok(t, add_special_tokens=False, return_offsets_mapping=True)
            cut.append(t if len(ids["input_ids"]) <= gL else t[:ids["offset_mapping"][gL - 1][1]])
        del prompts
        compare("generate", "varied", cut, gloop, gengine, False, ctok, gdiff,
                sizes=[8, 32] if not cuda else [32, 128])

    if "causal_lm_loss" in tasks or "generate" in tasks:
        del cmodel, lm
        if cuda:
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- encoder
    if "encoder_score" in tasks:
        t0 = time.perf_counter()
        eL = min(L, 512)
        etok = train_wordpiece_tokenizer(tok_train, size["vocab"]["encoder"], max_length=512)
        emodel = build_encoder(etok, args.model_size, max_positions=512, seed=args.seed,
                               device=str(dev) if cuda else None)
        emodel.to(dev)
        if cuda and ac_dtype != torch.float32:
            emodel.to(ac_dtype)
        torch.manual_seed(args.seed)
        head = EncoderHead(emodel.config.hidden_size, 1)
        elm = LoadedModel.wrap(emodel, etok, head=head)
        dhead = EncoderHead(emodel.config.hidden_size, 1).to(dev)
        dhead.load_state_dict(head.state_dict())
        print(f"# encoder: {sum(p.numel() for p in emodel.parameters()) / 1e6:.1f}M params, vocab {len(etok)}, "
              f"built in {time.perf_counter() - t0:.1f}s", flush=True)
        eq = equal_length_texts(etok, pool, eL - 2, n)

        def eloop(texts, bs):
            return loop_encoder(emodel, dhead, etok, texts, bs, eL, dev, ac_dtype)

        def eengine(texts):
            eng = engine_for()
            st_budget[0] = eng.max_tokens_per_batch
            task = EncoderScore(elm, engine=eng, max_length=eL, truncation="head")
            return task(texts)["score"].to_numpy().reshape(-1, 1), task.stats

        def ediff(a, b):
            return float(np.max(np.abs(a - b)))

        for scen, texts in (("equal", eq), ("varied", varied)):
            if texts:
                compare("encoder_score", scen, texts, eloop, eengine, True, etok, ediff)

    print(f"# total {time.perf_counter() - t_start:.1f}s", flush=True)
    return results


def print_table(rows: list[dict[str, Any]]) -> None:
    hdr = ["task", "set", "mode", "batch", "docs", "docs/s", "tokens/s", "pad waste", "ratio", "max diff"]
    lines = [hdr]
    for r in rows:
        lines.append([r["task"], r["set"], r["mode"], str(r["batch"]), str(r["docs"]), f"{r['docs_per_s']:.1f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['padding_waste']:.1%}",
                      f"{r['ratio']:.2f}x" if r.get("ratio") else "", "" if r["max_diff"] is None
                      else f"{r['max_diff']:.2g}"])
    w = [max(len(x[i]) for x in lines) for i in range(len(hdr))]
    for j, x in enumerate(lines):
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(x)))
        if j == 0:
            print("  ".join("-" * w[i] for i in range(len(hdr))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model-size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--tasks", default="causal_lm_loss,encoder_score,generate")
    ap.add_argument("--docs", type=int, default=None, help="documents per set")
    ap.add_argument("--gen-docs", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-tokens-per-batch", type=int, default=None, help="engine budget (default: engine's)")
    ap.add_argument("--batch-sizes", default=None, help="loop sweep, e.g. 8,16,32,64")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--corpora", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="alternating runs per mode, best counts "
                    "(default 3 on CPU, 2 on CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.repeats is None:
        cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        args.repeats = 2 if cuda else 3
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    rows = run(args)
    print()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

