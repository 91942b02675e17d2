"""Side-by-side speed and memory: plain TRL with its defaults against fai-rl through its shipped recipes.

For one model shape (random init: the GPU machines have no hub), one sequence length and each asked algorithm, it runs
(a) the TRL trainer with its defaults and (b) fai-rl's recipe path (load_recipe on the shipped recipe, the backend's
prepare() reading a JSONL file, train()), each in its own process, back to back on the same GPU. It reports per arm
the median optimizer-step time after warm-up, tokens/s (RL: generated tokens/s), MFU and peak GPU memory, as JSON
and a Markdown table with the fai-rl / TRL ratio.

    python scripts/bench.py --out /tmp/bench                                  # every arm, Qwen3-0.6B shape, seq 2048
    python scripts/bench.py --out /tmp/bench --arms sft_full,grpo --steps 6
    python scripts/bench.py --out /tmp/smoke --shape tiny --seq 64 --steps 2 --warmup 0 --arms sft_full --in-process
    python scripts/bench.py --out /tmp/probe --decode-probe    # HF generate alone: where GRPO's sampling time goes

Data are random token ids (a word-level tokenizer whose word `w<i>` is token i, so text and ids map one to one):
every SFT/DPO sequence is exactly --seq tokens long, so there is no padding; GRPO prompts are 64 tokens and the
random model rarely samples EOS, so completions run to max_completion_length.

MFU = model FLOPs per token x tokens/s / peak, with (per token, causal attention, fwd + bwd, recompute not counted)
    full fine-tune:        6 * N + 6 * L * s * d_attn
    LoRA / QLoRA (frozen): 4 * N + 6 * L * s * d_attn   (no weight gradients for the frozen base)
N = the matmul parameters (every linear layer of the blocks plus the LM head; the embedding lookup is free),
L = layers, s = sequence length, d_attn = heads * head_dim. Peak: --peak-tflops (790 TF/s bf16, measured on the H100).
DPO counts chosen + rejected tokens of the policy pass (the reference forward is extra work, not in the numerator).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPES = {
    # Qwen3-0.6B: tied embeddings, vocab 151936
    "qwen3-0.6b": {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                   "tie_word_embeddings": True},
    # Llama-3.1-8B (for the QLoRA memory arm)
    "llama3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                    "tie_word_embeddings": False, "rope_theta": 500000.0},
    # fai-rl/tiny's size: the CPU smoke test
    "tiny": {"model_type": "qwen3", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 512,
             "tie_word_embeddings": True},
}
PROFILE_STEP = int(os.environ.get("BENCH_PROFILE_STEP", "0"))  # >0: print a torch.profiler table of that step
GRPO_VOCAB = 32000  # the GRPO reference was measured with a 32k word-level vocab
PROMPT_TOKENS = 64
COMPLETION_TOKENS = 256

# arm -> (shipped recipe, what the step counts, LoRA?)
ARMS = {
    "sft_full": ("recipes/sft/qwen3_0.6b_full.yaml", "sft", False),
    "sft_lora": ("recipes/sft/qwen3_0.6b_lora.yaml", "sft", True),
    "qlora8b": ("recipes/sft/qwen3_0.6b_qlora.yaml", "sft", True),
    "dpo": ("recipes/dpo/qwen3_0.6b_lora.yaml", "dpo", True),
    "grpo": ("recipes/grpo/qwen3_0.6b_lora.yaml", "grpo", True),
    "gspo": ("recipes/gspo/qwen3_0.6b_lora.yaml", "grpo", True),
}
DEFAULT_ARMS = "sft_full,sft_lora,dpo,grpo,gspo,qlora8b"


# ---------------------------------------------------------------------------------------------------------- model


def build_model_dir(shape: str, vocab: int, out: Path, seed: int = 0) -> Path:
    """A HF model dir of `shape` with seeded random bf16 weights and a word-level tokenizer of `vocab` words."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = out / f"model-{shape}-v{vocab}"
    if (target / "config.json").exists():
        return target
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, max_position_embeddings=8192)
    config.vocab_size = vocab
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, 1, 0
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # an 8B init on the CPU takes minutes
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 1, 0
    model.save_pretrained(target)
    save_word_tokenizer(vocab, target)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return target


def save_word_tokenizer(vocab: int, target: Path) -> None:
    """Token i is the word `w<i>` (0 pad, 1 eos, 2 unk); the chat template concatenates the turns' contents."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        chat_template="{% for m in messages %}{{ m['content'] }} {% endfor %}",
    )
    fast.save_pretrained(target)


def words(rng: random.Random, vocab: int, n: int) -> str:
    return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))


def flops_per_token(shape: str, vocab: int, seq: int, frozen_base: bool) -> float:
    """Model FLOPs per trained token (see the module docstring for the formula)."""
    s = SHAPES[shape]
    h, inter, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    d_attn, d_kv = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    n_matmul = layers * (2 * h * d_attn + 2 * h * d_kv + 3 * h * inter) + vocab * h
    return (4 if frozen_base else 6) * n_matmul + 6 * layers * seq * d_attn


# ---------------------------------------------------------------------------------------------------------- data


def ragged_length(rng: random.Random, seq: int) -> int:
    """A chat row's total length, shaped like real chat data: exp(N(6.3, 0.7)) clipped to 32..seq (median ~545,
    mean ~670 for seq 2048)."""
    return max(32, min(seq, round(rng.lognormvariate(6.3, 0.7))))


def write_data(arm: str, vocab: int, seq: int, rows: int, path: Path, seed: int = 0, ragged: bool = False) -> None:
    """JSONL rows in the shape the arm's recipe reads: text (SFT), prompt/chosen/rejected (DPO), prompt/answer (RL).

    ragged: SFT rows are two-turn chats (`messages`, a quarter of the length the user turn) and DPO pairs a prompt
    (a quarter) with chosen and rejected replies of their own lengths, every length drawn by ragged_length."""
    rng = random.Random(seed)
    kind = ARMS[arm][1]
    with path.open("w") as fh:
        for _ in range(rows):
            if ragged and kind == "sft":
                n = ragged_length(rng, seq)
                user = max(1, n // 4)
                row = {"messages": [{"role": "user", "content": words(rng, vocab, user)},
                                    {"role": "assistant", "content": words(rng, vocab, n - user)}]}
            elif ragged and kind == "dpo":
                n = ragged_length(rng, seq)
                prompt = max(1, n // 4)
                row = {"prompt": words(rng, vocab, prompt), "chosen": words(rng, vocab, n - prompt),
                       "rejected": words(rng, vocab, max(1, ragged_length(rng, seq) * 3 // 4))}
            elif kind == "sft":
                row = {"text": words(rng, vocab, seq)}
            elif kind == "dpo":
                half = seq // 2
                row = {"prompt": words(rng, vocab, half), "chosen": words(rng, vocab, seq - half),
                       "rejected": words(rng, vocab, seq - half)}
            else:
                row = {"prompt": words(rng, vocab, PROMPT_TOKENS), "answer": "42"}
            fh.write(json.dumps(row) + "\n")


def real_tokens_per_row(arm: str, path: Path) -> float:
    """Mean tokens of one row as trained (DPO: chosen and rejected each with the prompt), pads not counted: a step's
    real tokens are this x its rows, the rows being drawn uniformly from the file."""
    kind, total = ARMS[arm][1], []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "messages" in r:
            total.append(sum(len(m["content"].split()) for m in r["messages"]))
        elif kind == "dpo":
            p = len(r["prompt"].split())
            total.append(2 * p + len(r["chosen"].split()) + len(r["rejected"].split()))
        else:
            total.append(len(r["text"].split()))
    return statistics.fmean(total)


def trl_rows(arm: str, path: Path) -> list[dict]:
    """The same JSONL in TRL's own formats (conversational for DPO/GRPO, like fai-rl hands them over)."""
    kind = ARMS[arm][1]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if kind == "dpo":
        return [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    if kind == "grpo":
        return [{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    return rows


# ---------------------------------------------------------------------------------------------------------- timing


def step_timer():
    """A TrainerCallback that records the wall time of every optimizer step (GPU synchronised) and RL lengths."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.lengths: list[float] = []
            self.generate_s: list[float] = []
            self.decode_steps: list[int] = []  # tokens each generate call decoded (its longest row)
            self.precompute_s, self.precompute_tokens = 0.0, 0
            self.started = self.train_begin = time.perf_counter()

        def _now(self) -> float:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            self.ends = [self._now()]
            self.train_begin = self.ends[0]

        def on_step_begin(self, args, state, control, **kw):
            if PROFILE_STEP and state.global_step + 1 == PROFILE_STEP:  # where one step's time goes
                import torch

                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(self._now())
            if getattr(self, "profiler", None) is not None:
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages()
                print(f"--- profile of step {PROFILE_STEP} (self CUDA time)", flush=True)
                print(table.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60), flush=True)
                print("--- (CPU total time)", flush=True)
                print(table.table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60), flush=True)
                self.profiler = None

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    return StepTimer()


def time_generate(timer) -> None:
    """Record the wall time and decode steps of every generate call (RL arms): HF generate and fai-rl's decoder."""
    import torch
    from transformers.generation.utils import GenerationMixin

    from fai_rl.decode import GraphDecoder

    def wrap(cls, name, new_tokens):
        original = getattr(cls, name)

        def timed(self, *args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = original(self, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            timer.generate_s.append(time.perf_counter() - start)
            timer.decode_steps.append(new_tokens(out, args, kwargs))
            return out

        setattr(cls, name, timed)

    def hf_new(out, args, kwargs):
        ids = out.sequences if hasattr(out, "sequences") else out
        return int(ids.shape[1] - (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[1])

    wrap(GenerationMixin, "generate", hf_new)
    wrap(GraphDecoder, "generate", lambda out, args, kwargs: int(out[0].shape[1]))


def time_reference_precompute(timer) -> None:
    """Record the time of DPOTrainer's one-off reference pass (precompute_ref_log_probs) and the tokens it saw."""
    from trl import DPOTrainer

    original = DPOTrainer._precompute_ref_logps

    def timed(self, dataset, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, dataset, *args, **kwargs)
        timer.precompute_s += time.perf_counter() - start
        timer.precompute_tokens += sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
                                       for r in dataset)
        return out

    DPOTrainer._precompute_ref_logps = timed


# ---------------------------------------------------------------------------------------------------------- one run


def run_one(spec: dict) -> dict:
    """One arm with one implementation ('trl' or 'fai'); returns its measurements."""
    import torch

    arm, impl, seq, work = spec["arm"], spec["impl"], spec["seq"], Path(spec["work"])
    recipe_path, kind, lora = ARMS[arm]
    shape = "llama3.1-8b" if arm == "qlora8b" and spec["shape"] != "tiny" else spec["shape"]
    vocab = SHAPES[shape]["vocab_size"] if kind != "grpo" or spec["shape"] == "tiny" else GRPO_VOCAB
    model_dir = build_model_dir(shape, vocab, work)
    steps, warmup = spec["steps"], spec["warmup"]
    ragged = spec.get("data") == "ragged" and kind != "grpo"
    data = work / f"data-{arm}-{seq}{'-ragged' if ragged else ''}.jsonl"
    if not data.exists():
        ragged_rows = 3072 if spec["shape"] != "tiny" else 256  # the tiny shape is the CPU smoke test
        rows = ragged_rows if ragged else 32 * (steps + warmup + 1) if kind != "grpo" else 8 * (steps + warmup + 1)
        write_data(arm, vocab, seq, rows=rows, path=data, ragged=ragged)
    out_dir = work / f"run-{spec['name']}"
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    if kind == "grpo":
        time_generate(timer)
    if kind == "dpo":
        time_reference_precompute(timer)
    timer.started = time.perf_counter()
    max_steps = steps + warmup
    settings = (_train_fai if impl == "fai" else _train_trl)(
        spec, arm, kind, lora, recipe_path, model_dir, data, out_dir, max_steps, timer)
    step_s = [b - a for a, b in zip(timer.ends, timer.ends[1:])][warmup:]
    median = statistics.median(step_s)
    result = {"name": spec["name"], "arm": arm, "impl": impl, "shape": shape, "vocab": vocab, "seq": seq,
              "steps_timed": len(step_s), "warmup_steps": warmup, "step_s": [round(s, 4) for s in step_s],
              "median_step_s": round(median, 4), "settings": settings,
              "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available()
              else None}
    if kind == "grpo":
        completions = settings["completions_per_step"]
        mean_len = statistics.median(timer.lengths[warmup:] or timer.lengths or [0.0])
        result["completions_per_step"] = completions
        result["mean_completion_tokens"] = round(mean_len, 1)
        result["gen_tokens_per_s"] = round(completions * mean_len / median, 1)
        gen = timer.generate_s[warmup:] or timer.generate_s
        if gen:
            result["generate_s_per_step"] = round(statistics.median(gen) * len(timer.generate_s) / max_steps, 3)
            result["generate_share"] = round(result["generate_s_per_step"] / median, 3)
            calls = list(zip(timer.generate_s, timer.decode_steps))[warmup:] or list(zip(timer.generate_s,
                                                                                       timer.decode_steps))
            result["ms_per_decode_step"] = round(1000 * statistics.median(s / max(n, 1) for s, n in calls), 2)
    else:
        # every sequence --seq tokens; ragged: the rows' mean real length x rows a step (pads are not tokens)
        per_row = real_tokens_per_row(arm, data) / (2 if kind == "dpo" else 1) if ragged else seq
        tokens = round(settings["sequences_per_step"] * per_row)
        fpt = flops_per_token(shape, vocab, round(per_row) if ragged else seq, frozen_base=lora)
        result["data"] = "ragged" if ragged else "fixed"
        result["tokens_per_step"] = tokens
        result["tokens_per_s"] = round(tokens / median, 1)
        result["flops_per_token"] = fpt
        result["mfu"] = round(tokens / median * fpt / (spec["peak_tflops"] * 1e12), 4) if spec["peak_tflops"] else None
        if timer.precompute_tokens:  # the reference pass counted in: seconds per token of training plus of the pass
            result["precompute_ref_s"] = round(timer.precompute_s, 2)
            per_token = median / tokens + timer.precompute_s / timer.precompute_tokens
            result["tokens_per_s_with_precompute"] = round(1 / per_token, 1)
    result["setup_s"] = round(timer.train_begin - timer.started, 1)  # model load, data, reference pass
    return result


def _lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


# What an expert sets on TRL for speed on one big GPU (impl "trl_tuned"): Liger's fused kernels, no activation
# checkpointing (the memory is there), the batch the hand-tuned arm used. The rest stays TRL's default.
TRL_TUNED = {"sft": {"use_liger_kernel": True, "gradient_checkpointing": False, "per_device_train_batch_size": 16},
             "dpo": {"use_liger_kernel": True, "gradient_checkpointing": False, "per_device_train_batch_size": 8},
             # GRPO without vLLM: TRL's generate has no faster setting that helps (a static cache without compile is
             # slower, and TRL fixes disable_compile); an expert drops checkpointing on a GPU with room
             "grpo": {"gradient_checkpointing": False}}


def _train_trl(spec, arm, kind, lora, recipe_path, model_dir, data, out_dir, max_steps, timer) -> dict:
    """Plain TRL: the trainer's config defaults ("trl") or an expert's settings ("trl_tuned", TRL_TUNED); only the run
    length, lengths and logging are set besides."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    tuned = TRL_TUNED.get(kind, {}) if spec["impl"] == "trl_tuned" and torch.cuda.is_available() else {}
    common = {"output_dir": str(out_dir), "max_steps": max_steps, "logging_steps": 1, "save_strategy": "no",
              "report_to": "none", "disable_tqdm": True, **tuned, **spec.get("trl_kwargs", {})}
    if not torch.cuda.is_available():
        common.setdefault("bf16", False)
    load = {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}
    if arm == "qlora8b":
        load["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        common.setdefault("per_device_train_batch_size", 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    rows = trl_rows(arm, data)
    peft = _lora_config(16, 32, 0.0) if lora and kind != "grpo" else None  # peft's default dropout (0)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=spec["seq"])
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft, callbacks=[timer])
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    elif kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, max_length=spec["seq"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft, callbacks=[timer])
        per_step = 2 * args.per_device_train_batch_size * args.gradient_accumulation_steps
    else:
        from trl import GRPOConfig, GRPOTrainer

        def reward(completions, **kw):
            return [float(len(c[0]["content"]) % 7) for c in completions]

        common.setdefault("per_device_train_batch_size", 64 if torch.cuda.is_available() else 8)
        extra = {} if arm == "grpo" else {"importance_sampling_level": "sequence", "loss_type": "grpo"}
        args = GRPOConfig(**common, **extra, max_completion_length=spec["completion_tokens"])
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, callbacks=[timer])
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    trainer.train()
    got = {"sequences_per_step": per_step, "completions_per_step": per_step,
           "per_device_train_batch_size": args.per_device_train_batch_size,
           "gradient_accumulation_steps": args.gradient_accumulation_steps,
           "gradient_checkpointing": args.gradient_checkpointing, "use_liger_kernel": args.use_liger_kernel,
           "optim": getattr(args.optim, "value", args.optim), "peft": peft is not None}
    return got


def _train_fai(spec, arm, kind, lora, recipe_path, model_dir, data, out_dir, max_steps, timer) -> dict:
    """fai-rl's own path: the shipped recipe with the benchmark's model, data and run length put in as overrides."""
    from fai_rl.artifacts import RunDir
    from fai_rl.backends import algorithm_module
    from fai_rl.config import load_recipe

    ragged_chat = spec.get("data") == "ragged" and kind == "sft"
    columns = {"sft": "messages_column: messages" if ragged_chat else "text_column: text", "dpo": "prompt_column: prompt",
               "grpo": "prompt_column: prompt, answer_column: answer"}[kind]
    overrides = [
        f"model.base_model_name={model_dir}", f"training.output_dir={out_dir}", "training.overwrite_output_dir=true",
        f"training.max_steps={max_steps}", "training.logging_steps=1", "training.save_steps=100000",
        "training.eval_steps=null", "wandb.enabled=false", f"data.datasets=[{{name: {data}, {columns}}}]",
        "data.eval_datasets=[]", "data.system_prompt=null",
    ]
    if kind == "grpo":  # prompts are PROMPT_TOKENS long; data.max_length stays the recipe's
        overrides.append(f"training.max_completion_length={spec['completion_tokens']}")
    else:
        overrides.append(f"data.max_length={spec['seq']}")
    if arm == "qlora8b":
        overrides += ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=1"]
    recipe = load_recipe(ROOT / recipe_path, overrides + list(spec.get("overrides", [])))
    module = algorithm_module(recipe)
    prepared = module.prepare(recipe, None)
    run = RunDir(recipe.training.output_dir)
    run.start(recipe)
    module.train(recipe, prepared, run, callbacks=[timer])
    t = recipe.training
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    from fai_rl.backends.local.common import resolved_performance

    return {"sequences_per_step": per_step * (2 if kind == "dpo" else 1), "completions_per_step": per_step,
            "per_device_train_batch_size": t.per_device_train_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps, **resolved_performance(recipe),
            "optim": t.optim, "peft": recipe.model.use_lora, "overrides": list(spec.get("overrides", []))}


def decode_probe(work: Path, completion_tokens: int, batch: int = 64, only: str | None = None) -> list[dict]:
    """Where GRPO's sampling time goes: generate alone (no training) on the GRPO model, per configuration (`only`:
    the configurations whose name holds that text)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    model_dir = build_model_dir("qwen3-0.6b", GRPO_VOCAB, work)
    prompts = torch.randint(3, GRPO_VOCAB, (batch, PROMPT_TOKENS), device="cuda")
    rows = []

    def timed(name, model, **kw):
        if only and only not in name:
            return
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                if kw.get("generation_config") is not None:  # how TRL calls it (and what the decoder takes)
                    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), **kw)
                else:
                    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                         max_new_tokens=completion_tokens, pad_token_id=0, eos_token_id=1, **kw)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        new = out.shape[1] - PROMPT_TOKENS
        row = {"probe": name, "first_s": round(times[0], 2), "median_s": round(statistics.median(times[1:]), 3),
               "ms_per_token": round(1000 * statistics.median(times[1:]) / new, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    timed("plain model, dynamic cache (TRL default)", base, disable_compile=True)
    timed("plain model, static cache + compile", base, cache_implementation="static")
    lora = get_peft_model(base, _lora_config(32, 64, 0.0))
    lora.eval()
    timed("LoRA r32 unmerged, dynamic cache", lora, disable_compile=True)
    timed("LoRA r32 unmerged, static cache + compile", lora, cache_implementation="static")
    lora.base_model.model.enable_input_require_grads()  # what training with checkpointing + PEFT leaves on
    timed("LoRA r32 + input-grad hook, static + compile", lora, cache_implementation="static")
    from fai_rl.backends.local.grpo import sample_with_merged_lora
    from fai_rl import decode

    decode.install(lora)
    sample_with_merged_lora(lora)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=completion_tokens,
                              pad_token_id=0, eos_token_id=1)
    timed("LoRA r32, fai-rl graph decoder (merged)", lora, generation_config=config)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    decode.install(plain)
    timed("plain model, fai-rl graph decoder", plain, generation_config=config)
    return rows


# ---------------------------------------------------------------------------------------------------------- report


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no GPU)"


METRIC_COLUMNS = ("tokens_per_s", "gen_tokens_per_s", "median_step_s", "mfu", "peak_gpu_mem_gib")


def markdown(results: list[dict], meta: dict) -> str:
    """A table per arm: plain TRL, fai-rl, and fai-rl / TRL for every metric."""
    lines = [f"GPU: {meta['gpu']}; shape {meta['shape']}; seq {meta['seq']}; data {meta.get('data', 'fixed')}; median of {meta['steps']} steps after "
             f"{meta['warmup']} warm-up; MFU against {meta['peak_tflops']} TF/s; {meta['date']}", "",
             "| arm | run | tokens/s | gen tokens/s | s/step | MFU | peak GiB | batch x accum | settings |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return "–"
        return f"{v:.1%}" if k == "mfu" else (f"{v:,.0f}" if k.endswith("per_s") else f"{v:g}")

    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm, rows in by_arm.items():
        for r in rows:
            if "error" in r:
                lines.append(f"| {arm} | {r['name']} | failed: {r['error'][:120]} |  |  |  |  |  |  |")
                continue
            s = r["settings"]
            flags = ", ".join(f"{k}={v}" for k, v in s.items() if k in (
                "gradient_checkpointing", "use_liger_kernel", "fast_generation", "optim") and v is not None)
            lines.append(f"| {arm} | {r['name']} | " + " | ".join(cell(r, k) for k in METRIC_COLUMNS)
                         + f" | {s['per_device_train_batch_size']}x{s['gradient_accumulation_steps']} | {flags} |")
        best = next((r for r in rows if r["name"] == arm + ":fai" and "error" not in r), None)
        for impl, label in (("trl", "TRL defaults"), ("trl_tuned", "tuned TRL")):
            base = next((r for r in rows if r["impl"] == impl and "error" not in r), None)
            if not (base and best):
                continue
            ratios = []
            for k in METRIC_COLUMNS:  # s/step: TRL over fai-rl (a speed-up), every other column fai-rl over TRL
                same_step = base["settings"]["sequences_per_step"] == best["settings"]["sequences_per_step"]
                if base.get(k) and best.get(k) and (k != "median_step_s" or same_step):
                    ratio = base[k] / best[k] if k == "median_step_s" else best[k] / base[k]
                    ratios.append(f"{ratio:.2f}x")
                else:
                    ratios.append("–")
            lines.append(f"| {arm} | **fai-rl vs {label}** | " + " | ".join(ratios) + " |  |  |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where bench.json, bench.md and the runs go")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--impls", default="trl,trl_tuned,fai",
                   help="trl (plain TRL defaults), trl_tuned (an expert's TRL settings), fai (the shipped recipe)")
    p.add_argument("--data", default="fixed", choices=["fixed", "ragged"],
                   help="SFT/DPO rows all --seq tokens (fixed) or shaped like real chat data (ragged)")
    p.add_argument("--shape", default="qwen3-0.6b", choices=[s for s in SHAPES if s != "llama3.1-8b"])
    p.add_argument("--seq", type=int, default=2048, help="SFT/DPO sequence length")
    p.add_argument("--completion-tokens", type=int, default=COMPLETION_TOKENS, help="GRPO/GSPO completion length")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (median taken)")
    p.add_argument("--rl-steps", type=int, default=None, help="timed steps for GRPO/GSPO (default: --steps)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (compile, allocator, caches)")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default 790 on an H100/H200)")
    p.add_argument("--variant", action="append", default=[],
                   help="an extra run NAME=ARM:IMPL:k=v;k=v (fai: recipe overrides; trl: config kwargs)")
    p.add_argument("--in-process", action="store_true", help="run every arm in this process (CPU smoke test)")
    p.add_argument("--decode-probe", nargs="?", const="", default=None, metavar="ONLY",
                   help="time generate alone per configuration (GPU); ONLY: the configurations whose name holds it")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.decode_probe is not None:
        rows = decode_probe(Path(args.out), args.completion_tokens, only=args.decode_probe or None)
        Path(args.out, "decode_probe.json").write_text(json.dumps(rows, indent=1))
        return 0

    if args.worker:  # one run, in its own process; writes its JSON next to the spec
        spec = json.loads(Path(args.worker).read_text())
        result = run_one(spec)
        Path(args.worker).with_suffix(".result.json").write_text(json.dumps(result, indent=1))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    peak = args.peak_tflops or (790.0 if "H100" in gpu or "H200" in gpu else None)  # same bf16 dense peak
    base = {"shape": args.shape, "seq": args.seq, "completion_tokens": args.completion_tokens, "data": args.data,
            "warmup": args.warmup, "peak_tflops": peak, "work": str(out)}
    specs = []
    for arm in [a for a in args.arms.split(",") if a]:
        if arm not in ARMS:
            p.error(f"--arms: unknown arm '{arm}'; choose from {', '.join(ARMS)}")
        steps = args.rl_steps if ARMS[arm][1] == "grpo" and args.rl_steps else args.steps
        for impl in args.impls.split(","):
            specs.append({**base, "name": f"{arm}:{impl}", "arm": arm, "impl": impl, "steps": steps})
    for v in args.variant:
        name, body = v.split("=", 1)
        arm, impl, *rest = body.split(":", 2)
        kv = [x for x in (rest[0].split(";") if rest else []) if x]
        steps = args.rl_steps if ARMS[arm][1] == "grpo" and args.rl_steps else args.steps
        spec = {**base, "name": name, "arm": arm, "impl": impl, "steps": steps}
        if impl == "fai":
            spec["overrides"] = kv
        else:
            import yaml

            spec["trl_kwargs"] = {k: yaml.safe_load(val) for k, val in (x.split("=", 1) for x in kv)}
        specs.append(spec)

    meta = {"gpu": gpu, "shape": args.shape, "seq": args.seq, "data": args.data, "steps": args.steps,
            "warmup": args.warmup,
            "peak_tflops": peak, "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "command": "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    results = []
    for i, spec in enumerate(specs):
        print(f"--- {spec['name']}", flush=True)
        start = time.time()
        try:
            if args.in_process:
                result = run_one(spec)
            else:
                spec_path = out / f"spec-{i}.json"
                spec_path.write_text(json.dumps(spec))
                env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
                proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--worker", str(spec_path)],
                                      env=env, capture_output=True, text=True)
                (out / f"log-{i}.txt").write_text(proc.stdout + proc.stderr)
                if proc.returncode != 0:
                    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1])
                result = json.loads(spec_path.with_suffix(".result.json").read_text())
        except Exception as e:  # one failed arm must not lose the others' numbers
            result = {"name": spec["name"], "arm": spec["arm"], "impl": spec["impl"], "error": f"{type(e).__name__}: {e}"}
        result["wall_s"] = round(time.time() - start, 1)
        print(json.dumps({k: v for k, v in result.items() if k != "step_s"}), flush=True)
        results.append(result)
        (out / "bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))  # kept if cut short

    table = markdown(results, meta)
    (out / "bench.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
