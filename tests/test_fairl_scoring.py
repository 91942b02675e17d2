"""FAI-RL's MMLU and GSM8K scoring (fai_rl.inference.scoring) on hand-written replies, accuracies worked out by hand
the way FAI-RL's evaluations/eval.py computes them (the whole fai-rl-eval path runs in tests/test_serve.py)."""

from __future__ import annotations

import pytest

from fai_rl.inference.scoring import gsm8k_prediction, gsm8k_truth, mmlu_prediction, score


def test_mmlu_as_fairl_scores_it():
    replies = ['{\n  "answer": "B"\n}',  # JSON -> B
               "Let me think. The correct answer is C.",  # 'answer is C' -> C
               "answer: a",  # upper-cased first -> A
               "D, because the others are wrong",  # first character -> D
               "I think it is B",  # first character 'I' is a label (A..J): I, wrong (FAI-RL's quirk, kept)
               "Not sure"]  # 'N' is no label -> no answer
    truths = [1, 2, 0, 3, 1, 0]  # B C A D B A
    assert [mmlu_prediction(r) for r in replies] == ["B", "C", "A", "D", "I", None]
    metrics, rows = score("mmlu", replies, truths)
    # 4 right of 6 rows; 5 extracted: overall 4/6, valid 4/5, extraction 5/6
    assert metrics["overall_accuracy"] == pytest.approx(4 / 6)
    assert metrics["valid_accuracy"] == pytest.approx(4 / 5)
    assert metrics["extraction_success_rate"] == pytest.approx(5 / 6)
    assert [r["correct"] for r in rows] == [True, True, True, True, False, False]
    assert [r["ground_truth"] for r in rows] == list("BCADBA")


def test_gsm8k_as_fairl_scores_it():
    replies = ['{"answer": "1,234"}',  # JSON, commas dropped -> 1234
               "5 + 3 = 8 apples.\n#### 8",  # after the last #### -> 8
               "The answer is $42.",  # 'answer is' delimiter, '$' and '.' dropped -> 42 (truth 41: wrong)
               "no idea",  # no number -> no answer
               "She keeps 007 apples"]  # last number, leading zeros dropped -> 7
    truths = ["600 + 634 = <<600+634=1234>>1234\n#### 1,234", "#### 8", "#### 41", "#### 3", "3 + 4 = 7\n#### 7"]
    assert [gsm8k_prediction(r) for r in replies] == ["1234", "8", "42", None, "7"]
    assert [gsm8k_truth(t) for t in truths] == ["1234", "8", "41", "3", "7"]
    metrics, _ = score("gsm8k", replies, truths)
    # 3 right of 5; 4 extracted: overall 0.6, valid 0.75, extraction 0.8
    assert (metrics["overall_accuracy"], metrics["valid_accuracy"], metrics["extraction_success_rate"]) == \
        pytest.approx((0.6, 0.75, 0.8))
    assert (metrics["correct_predictions"], metrics["valid_predictions"], metrics["invalid_predictions"]) == (3, 4, 1)
