"""FAI-RL's inference and evaluation recipes (fai-rl-inference, fai-rl-eval's FAI-RL path) and fai-rl-serve, an
OpenAI-compatible server over fai-rl's sampling engine."""
