"""Scoring FAI-RL's evaluation recipes as FAI-RL scores them (evaluations/eval.py, eval_datasets/{mmlu,gsm8k}.py).

MMLU: the predicted letter is the first match of, in order, a JSON `"answer": "X"`, 'the (best|final|correct)
answer/option/choice is X', 'Answer: X', 'option X is the best answer', 'the answer is option X', 'the answer
should/would/must/could be X', 'option X is correct', else the reply's first character when it is a label; the ground
truth is the label at the `answer` index. GSM8K: the predicted number is the last number of, in order, a JSON
`"answer": ...` value, the text after the last `####` / 'answer is' / 'final answer', else the last number anywhere;
numbers lose thousands commas, '$', a trailing '.', leading zeros; the ground truth is the last number after '####'.
A prediction is correct when it equals the ground truth ignoring case and surrounding space. Per model:
overall_accuracy = correct / rows, valid_accuracy = correct / extracted, extraction_success_rate = extracted / rows.
"""

from __future__ import annotations

import re

LABELS = list("ABCDEFGHIJ")
_NUMBER = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?")
_DELIMITERS = ("####", "ANSWER IS", "FINAL ANSWER")


def mmlu_prediction(text: str | None, labels: list[str] | None = None) -> str | None:
    """The chosen letter in a reply (see the module doc), or None."""
    if not text:
        return None
    L = "[" + "".join(labels or LABELS) + "]"
    up = text.upper()
    patterns = (
        rf'"ANSWER"\s*:\s*"({L})"',
        rf"(?:THE\s+)?(?:BEST|FINAL|CORRECT)?\s*(?:ANSWER|OPTION|CHOICE)\s+IS\s+({L})",
        rf"ANSWER:\s*({L})",
        rf"(?:OPTION|ANSWER|CHOICE)\s+({L})\s+IS\s+(?:THE\s+)?(?:BEST|FINAL)?\s*(?:ANSWER|OPTION|CHOICE)",
        rf"(?:THE\s+)?(?:ANSWER|OPTION|CHOICE)\s+IS\s+(?:OPTION|ANSWER|CHOICE)\s+({L})",
        rf"(?:THE\s+)?(?:BEST|FINAL|CORRECT)?\s*(?:ANSWER|OPTION|CHOICE)\s+(?:SHOULD|WOULD|MUST|COULD)\s+BE\s+({L})",
        rf"(?:OPTION|ANSWER|CHOICE)\s+({L})\s+IS\s+(?:THE\s+)?CORRECT",
    )
    for pattern in patterns:
        m = re.search(pattern, up)
        if m:
            return m.group(1)
    stripped = text.strip().upper()
    first = stripped[0] if stripped else ""
    return first if first and first in (labels or LABELS) else None


def mmlu_truth(value, labels: list[str] | None = None) -> str | None:
    """The letter of an answer index (0 -> A), or None."""
    labels = labels or LABELS
    try:
        i = int(value)
    except (TypeError, ValueError):
        return None
    return labels[i] if 0 <= i < len(labels) else None


def _normalise(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "")
    s = re.sub(r"^=+", "", s)
    s = re.sub(r"\.$", "", s).strip()
    return str(int(s)) if re.fullmatch(r"0+[0-9]+", s) else s


def gsm8k_prediction(text: str | None) -> str | None:
    """The final number of a reply (see the module doc), or None."""
    if not text:
        return None
    m = re.search(r'"answer"\s*:\s*"?([^"\n]+)"?', text, flags=re.IGNORECASE)
    if m:
        nums = _NUMBER.findall(m.group(1).strip())
        return _normalise(nums[-1] if nums else m.group(1).strip())
    tail = None
    for delim in _DELIMITERS:  # the last delimiter in this order that occurs wins, as in FAI-RL
        if delim in text.upper():
            tail = re.split(delim, text, flags=re.IGNORECASE)[-1]
    if tail:
        nums = _NUMBER.findall(tail)
        return _normalise(nums[-1] if nums else tail.split("\n")[0])
    nums = _NUMBER.findall(text)
    return _normalise(nums[-1]) if nums else None


def gsm8k_truth(text) -> str | None:
    """The number after the last '####' of a GSM8K answer (else its last number)."""
    text = "" if text is None else str(text)
    if not text:
        return None
    part = text.split("####")[-1].strip() if "####" in text else text
    nums = _NUMBER.findall(part)
    if nums:
        return _normalise(nums[-1])
    return _normalise(part) if "####" in text else None


def score(task: str, responses: list[str | None], truths: list, labels: list[str] | None = None):
    """(metrics, per-row [prediction, ground_truth, correct]) of one model's replies on a task."""
    predict = (lambda r: mmlu_prediction(r, labels)) if task == "mmlu" else gsm8k_prediction
    truth = (lambda t: mmlu_truth(t, labels)) if task == "mmlu" else (lambda t: gsm8k_truth(str(t)))
    rows, correct, valid = [], 0, 0
    for response, raw in zip(responses, truths, strict=True):
        pred, gt = predict(response), truth(raw)
        ok = pred is not None and gt is not None and pred.strip().lower() == gt.strip().lower()
        valid += pred is not None
        correct += ok
        rows.append({"prediction": pred, "ground_truth": gt, "correct": ok})
    n = len(rows)
    metrics = {"overall_accuracy": correct / n if n else 0.0, "valid_accuracy": correct / valid if valid else 0.0,
               "extraction_success_rate": valid / n if n else 0.0, "total_examples": n,
               "correct_predictions": correct, "valid_predictions": valid, "invalid_predictions": n - valid}
    return metrics, rows


def task_of(c) -> tuple[str, str | None]:
    """(mmlu | gsm8k, a note when it was guessed): the `task` key, else FAI-RL's dataset names, else the columns."""
    if c.task:
        return c.task, None
    if c.dataset_name == "cais/mmlu":
        return "mmlu", None
    if c.dataset_name == "openai/gsm8k":
        return "gsm8k", None
    guess = "mmlu" if "choices" in c.dataset_columns else "gsm8k"
    return guess, (f"evaluation.task: null and dataset_name '{c.dataset_name}' is neither cais/mmlu nor openai/gsm8k; "
                   f"scoring as {guess} ({'a choices column' if guess == 'mmlu' else 'no choices column'}); set "
                   "evaluation.task to choose.")
