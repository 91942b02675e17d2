"""The Tinker backend: the same recipes trained on Thinking Machines' hosted training API through the `tinker` SDK.

sft (SFT and CPT) and dpo are loops of their own; grpo (GRPO and GSPO) and ppo are configurations of one RL driver
(rollouts.train_rl), and workflow trains multi-role workflows through grpo's update. All share the service session
(common.py), and with the local backend the step count, each step's rows and learning rate (fai_rl.schedule), data
loading, chat rendering, rewards and the advantage/loss maths (fai_rl.rl_math).
"""
