"""Statistics of samples shared by training logs and evaluation: plain Python, importing nothing from fai_rl.

It sits at the top of the package so every floor can use it without an import circle: fai_rl.evaluation (fai-rl-eval's
pass@k) and fai_rl.workflows (the eval_solver_pass@k of workflow training) both read it, and fai_rl.rl_math keeps the
name importable for older callers.
"""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with n samples, c of them correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    The chance that k of the n samples, drawn without replacement, include a correct one. Python's integers make
    both binomials exact and the division rounds once, so no product form is needed against overflow (the paper's
    numpy code needs one).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
