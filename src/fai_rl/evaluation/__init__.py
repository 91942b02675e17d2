"""Evaluation and generation after training: `fai-rl-eval` and `fai-rl-generate`.

metrics.py   pass@k (unbiased), exact / numeric match, multiple-choice letter parsing
samplers.py  one interface over a local model (transformers) and Tinker sampler weights: generate + score choices
tasks.py     an eval task's dataset rows -> prompts and references, checked before any model loads
run.py       the evaluation loop, eval/results.json + eval/samples.jsonl, the printed comparison table
"""
