"""Reward functions for the RL algorithms (GRPO, GSPO, PPO; local and Tinker): built-ins and the plug-in loader.

A recipe's `rewards:` list names functions (`exact_match`, `module:function`, `path/file.py:function`) with a weight
and kwargs. check_rewards validates them as a load_recipe rule; build_rewards returns RewardFn objects that TRL can
call directly (they log under `.name`; pass `[f.weight for f in fns]` as reward_weights) and that other backends use
through score_rewards. Nothing here imports torch until a reward model is loaded.
"""

from fai_rl.rewards.countdown import evaluate_equation, extract_equation
from fai_rl.rewards.function import RewardError, RewardFn, completion_text, preview_rewards, prompt_text, score_rewards
from fai_rl.rewards.loader import BUILTINS, build_rewards, check_rewards, recipe_rewards, resolve_function
from fai_rl.rewards.text import extract_final_number, normalize_text

__all__ = [
    "BUILTINS",
    "RewardError",
    "RewardFn",
    "build_rewards",
    "check_rewards",
    "completion_text",
    "evaluate_equation",
    "extract_equation",
    "extract_final_number",
    "normalize_text",
    "preview_rewards",
    "prompt_text",
    "recipe_rewards",
    "resolve_function",
    "score_rewards",
]
