"""FAI-RL's inference and evaluation recipes (`inference:` / `evaluation:` with model_paths, dataset_name, output_file),
read unchanged by fai-rl-inference and fai-rl-eval.

Their keys are FAI-RL's (github.com/Roblox/FAI-RL core/config.py InferenceConfig / EvaluationConfig, the names and
defaults are facts); the few of ours come last and say so. Loaded by fai_rl.config.load_fairl_infer with the same
machinery as our recipes (unknown keys, types, file:line in every error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fai_rl.config.schema_fields import _f

# FAI-RL's multimodal keys: accepted by the schema so the message can say where they belong (the VLM issue)
VLM_KEYS = ("image_columns", "image_cache_dir", "image_fetch_timeout", "image_fetch_retries", "max_image_pixels",
            "image_s3_region", "image_s3_endpoint_url", "video_columns", "video_cache_dir", "video_fetch_timeout",
            "video_fetch_retries", "video_num_frames", "video_fps", "video_backend", "video_s3_region",
            "video_s3_endpoint_url")
EVAL_TASKS = ("mmlu", "gsm8k")


@dataclass
class FaiRLInferenceConfig:
    """What FAI-RL's `inference:` section holds (and `evaluation:`, which adds the answer keys)."""

    model_paths: Optional[list[str]] = _f(None, help="Local models or checkpoints (run dirs, checkpoint-N, final/, "
                                          "adapters); several: one pass each, a checkpoint column says which.")
    model: Optional[str] = _f(None, help="A hub/built-in model id, or with api_endpoint the API's model name.")
    api_endpoint: Optional[str] = _f(None, help="API URL (OpenAI-compatible incl. vLLM/TGI/fai-rl-serve, Anthropic, "
                                     "Gemini: chosen from the host as FAI-RL does).")
    api_key: Optional[str] = _f(None, help="Placeholder or null only: the key is read from the environment "
                                "(FAI_RL_API_KEY, else OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY).")
    dataset_name: str = _f(help="Hub dataset id, or a local .csv/.jsonl/.json/.parquet file.")
    dataset_subset: Optional[str] = _f(None, help="Dataset config name (e.g. MMLU's 'all', GSM8K's 'main').")
    dataset_split: str = _f("test", help="Split to run on (ignored for local files).")
    output_file: str = _f(help="Results file: .csv (FAI-RL's format, every field quoted) or .jsonl; written "
                          "atomically.")
    system_prompt: str = _f("", help="str.format template over the row's columns: the whole prompt (flat mode), or "
                            "the system turn when user_prompt is set.")
    user_prompt: Optional[str] = _f(None, help="Set: chat mode (system + user turns through the chat template).")
    dataset_columns: list[str] = _f(["persona", "prompt"], help="Columns the templates use, copied to the output.")
    response_column: str = _f("response", help="Output column holding the model's reply.")
    checkpoint_column: str = _f("checkpoint", help="Output column naming the model (several model_paths).")
    temperature: float = _f(1.0, help="Sampling temperature (do_sample false: greedy).")
    top_p: float = _f(0.9, help="Nucleus sampling mass.")
    max_new_tokens: int = _f(200, help="Longest reply, in tokens.")
    do_sample: bool = _f(True, help="false: greedy decoding.")
    choice_labels: Optional[list[str]] = _f(None, help="MMLU choice letters (default A..J).")
    s3_upload_results: bool = _f(False, help="FAI-RL's result upload to S3: not offered here (false only).")
    s3_bucket: Optional[str] = _f(None, help="With s3_upload_results (not offered).")
    s3_prefix: str = _f("", help="With s3_upload_results (not offered).")
    s3_region: Optional[str] = _f(None, help="With s3_upload_results (not offered).")
    s3_endpoint_url: Optional[str] = _f(None, help="With s3_upload_results (not offered).")
    image_columns: Optional[list[str]] = _f(None, help="FAI-RL's VLM inference: not offered (null only).")
    image_cache_dir: Optional[str] = _f(None, help="VLM (not offered).")
    image_fetch_timeout: int = _f(10, help="VLM (not offered).")
    image_fetch_retries: int = _f(3, help="VLM (not offered).")
    max_image_pixels: Optional[int] = _f(None, help="VLM (not offered).")
    image_s3_region: Optional[str] = _f(None, help="VLM (not offered).")
    image_s3_endpoint_url: Optional[str] = _f(None, help="VLM (not offered).")
    video_columns: Optional[list[str]] = _f(None, help="FAI-RL's video inference: not offered (null only).")
    video_cache_dir: Optional[str] = _f(None, help="VLM (not offered).")
    video_fetch_timeout: int = _f(10, help="VLM (not offered).")
    video_fetch_retries: int = _f(3, help="VLM (not offered).")
    video_num_frames: Optional[int] = _f(8, help="VLM (not offered).")
    video_fps: Optional[float] = _f(None, help="VLM (not offered).")
    video_backend: str = _f("pyav", help="VLM (not offered).")
    video_s3_region: Optional[str] = _f(None, help="VLM (not offered).")
    video_s3_endpoint_url: Optional[str] = _f(None, help="VLM (not offered).")
    # ours (not FAI-RL's)
    batch_size: int = _f(64, help="fai-rl: local sequences generated together.")
    api_concurrency: int = _f(8, help="fai-rl: API requests in flight at once.")
    api_max_retries: int = _f(4, help="fai-rl: retries of a rate-limited or failed API request (exponential backoff).")
    api_timeout_s: float = _f(120.0, help="fai-rl: seconds one API request may take.")
    device: Optional[str] = _f(None, help="fai-rl: cpu, cuda, cuda:1 (default: a GPU when there is one).")
    seed: int = _f(0, help="fai-rl: sampling seed.")


@dataclass
class FaiRLEvalConfig(FaiRLInferenceConfig):
    """FAI-RL's `evaluation:` section: an inference pass, then answers extracted and compared with the ground truth."""

    dataset_name: str = _f("cais/mmlu", help="Hub dataset id, or a local .csv/.jsonl/.json/.parquet file.")
    dataset_columns: list[str] = _f(["question", "choices", "answer"], help="Columns the template uses, kept.")
    ground_truth_column: str = _f("answer", help="Column with the right answer (MMLU: index; GSM8K: '... #### N').")
    prompt_template: Optional[str] = _f(None, help="FAI-RL declares it and never reads it; accepted, unused.")
    temperature: float = _f(1.0, help="Sampling temperature (do_sample false: greedy).")
    max_new_tokens: int = _f(10, help="Longest reply, in tokens.")
    do_sample: bool = _f(False, help="false: greedy decoding.")
    task: Optional[str] = _f(None, help="fai-rl: how answers are scored, mmlu or gsm8k; null: from dataset_name "
                             "(cais/mmlu, openai/gsm8k) or, for a local copy, a 'choices' column means mmlu.",
                             choices=EVAL_TASKS)


@dataclass
class FaiRLInferenceRecipe:
    """A FAI-RL inference recipe: one `inference:` section."""

    inference: FaiRLInferenceConfig = _f(help="FAI-RL's inference settings.")


@dataclass
class FaiRLEvalRecipe:
    """A FAI-RL evaluation recipe: one `evaluation:` section."""

    evaluation: FaiRLEvalConfig = _f(help="FAI-RL's evaluation settings.")
