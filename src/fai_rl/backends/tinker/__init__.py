"""The Tinker backend: the same recipes trained on Thinking Machines' hosted training API through the `tinker` SDK.

One module per algorithm (sft, dpo, grpo for GRPO and GSPO, ppo), sharing the service session (common.py) and the
sampling/scoring of the RL algorithms (rollouts.py) with each other, and data loading, chat rendering, rewards and the
advantage/loss maths (fai_rl.rl_math) with the local backend.
"""
