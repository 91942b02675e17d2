"""FAI-RL's math prompt templates (its trainers/templates/gsm8k_template.py and openmathinstruct_template.py).

Both build the same conversation around a question: a system message asking for the <think>/<answer> format, one
worked example ("What is the largest single-digit prime number?" answered 7 in that format), then the question as
the last user turn. They differ only in the reference answer: GSM8K keeps the text after the last `####`, stripped
(the whole answer, stripped, when there is no `####`); OpenMathInstruct keeps `expected_answer` exactly as it is.
FAI-RL strips nothing else: "#### 1,234" gives "1,234", so the digit reward does not count it (GSM8K's answers are
written without separators). The texts below are FAI-RL's, byte for byte; tests pin them.
"""

from __future__ import annotations

SYSTEM_PROMPT = """
Respond in the following format:

<think>
...
</think>
<answer>
...
</answer>
"""

XML_COT_FORMAT = """\
<think>
{thinking}
</think>
<answer>
{answer}
</answer>
"""

EXAMPLE_QUESTION = "What is the largest single-digit prime number?"
EXAMPLE_REPLY = XML_COT_FORMAT.format(
    thinking="9 is divisible by 3 and 8 is divisible by 2, but 7 is prime.",
    answer="7",
)

TEMPLATES = ("gsm8k", "openmathinstruct")


def template_prompt(question: str) -> list[dict]:
    """FAI-RL's conversation for one question: system format, the one-shot example, then the question."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": EXAMPLE_QUESTION},
        {"role": "assistant", "content": EXAMPLE_REPLY},
        {"role": "user", "content": question},
    ]


def template_answer(template: str, answer: str) -> str:
    """The reference answer FAI-RL compares completions with, for `template` (gsm8k or openmathinstruct)."""
    if template == "gsm8k":
        return answer.split("####")[-1].strip() if "####" in answer else answer.strip()
    if template == "openmathinstruct":
        return answer
    raise ValueError(f"unknown prompt template {template!r}; one of {', '.join(TEMPLATES)}")
