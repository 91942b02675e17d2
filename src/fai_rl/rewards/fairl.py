"""FAI-RL's default GRPO/GSPO rewards (its trainers/rewards/accuracy_rewards.py and format_rewards.py), same scores.

FAI-RL scores every completion with three functions summed with weight 1 (its fourth, custom_reward_func, always
returns 0 and is left out):
  fairl_answer_match  2.0 when the text between <answer> and </answer>, whitespace collapsed, equals the row's
                      reference answer exactly (FAI-RL's exact_match_reward_func)
  fairl_xml_format    0.125 for each of <think>, </think>, <answer>, </answer> that occurs exactly once, less
                      0.001 per character after </answer> (its structured_xml_reward_func / count_xml)
  fairl_answer_digit  0.5 when that extracted answer is all digits (its digit_reward_func)
A completion without the tags is "extracted" whole, as in FAI-RL. Pair them with FAI-RL's prompt templates
(fai_rl.data.templates), whose reference answers they are written for; resolve_fai_rl_meaning does both for a
GRPO/GSPO recipe without rewards:.
"""

from __future__ import annotations

from fai_rl.rewards.text import column_values


def extract_xml_answer(completion: str) -> str:
    """FAI-RL's extract_answer: the text after the last <answer> up to </answer>, with newlines, tabs and runs of
    spaces collapsed (a literal backslash-n is dropped too)."""
    answer = completion.split("<answer>")[-1].split("</answer>")[0]
    answer = answer.strip().replace("\\n", "").replace("\n", "").replace("\r", "").replace("\t", " ")
    return " ".join(answer.split())


def count_xml(text: str) -> float:
    """FAI-RL's count_xml: 0.125 per tag present exactly once, less 0.001 per character after </answer>."""
    count = 0.0
    if text.count("<think>") == 1:
        count += 0.125
    if text.count("</think>") == 1:
        count += 0.125
    if text.count("<answer>") == 1:
        count += 0.125
    if text.count("</answer>") == 1:
        count += 0.125
        count -= len(text.split("</answer>")[-1]) * 0.001
    return count


def fairl_answer_match(completions: list[str], *, column: str = "answer", **columns) -> list[float]:
    """2.0 when the <answer> content equals the row's reference answer exactly, else 0.0 (FAI-RL's exact match).

    kwargs: column (str, default "answer"): the data column holding the reference answer. A reference that is a
    number in the data is compared as its text; FAI-RL's templates always give text.
    """
    refs = column_values(columns, column, len(completions), "column")
    return [2.0 if ref is not None and extract_xml_answer(c) == (ref if isinstance(ref, str) else str(ref)) else 0.0
            for c, ref in zip(completions, refs)]


def fairl_xml_format(completions: list[str]) -> list[float]:
    """Partial credit for the <think>/<answer> format, up to 0.5 (FAI-RL's structured_xml_reward_func)."""
    return [count_xml(c) for c in completions]


def fairl_answer_digit(completions: list[str]) -> list[float]:
    """0.5 when the <answer> content is all digits (str.isdigit), else 0.0 (FAI-RL's digit_reward_func)."""
    return [0.5 if extract_xml_answer(c).isdigit() else 0.0 for c in completions]
