"""data.max_length on the local GRPO/GSPO/RLOO trainers: prompts cut from the left, where the Tinker driver cuts them.

TRL 1.16's GRPOTrainer and RLOOTrainer bound no prompt (its max_prompt_length is gone), so a long prompt went to
generation whole here and cut on Tinker: a different run. The trainer renders as before (`_tokenize_prompts`: the chat
template with the assistant turn opened) and each prompt's token ids are then cut by the Truncations the Tinker driver
uses (fai_rl.data.rl.render_prompts): the last data.max_length tokens, so the opened assistant turn stays. The cut is
made on token ids in the trainer, not in the data: TRL takes conversations or text, not ids, and text decoded from a
cut need not re-tokenise to the same ids (a cut inside a word), nor would rewards still receive the conversation.

Counted as the Tinker driver counts: per generation batch, each prompt once (TRL repeats it num_generations times
across the processes, so the gathered counts are divided by that), logged as truncated_prompts /
truncated_prompt_tokens in the step that batch trains first (summed over a logging window) and as
eval_truncated_prompts / eval_truncated_prompt_tokens per evaluation; the run's total is said in one line at the end.
"""

from __future__ import annotations

from fai_rl.data.truncation import Truncations


class CutPrompts:
    """Mixed in before GRPOTrainer / RLOOTrainer (see with_prompts_cut); `prompt_limit` is data.max_length."""

    prompt_limit: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts_cut = Truncations("prompt", self.prompt_limit)  # train prompts cut over the run: the end note
        self._cut_since_log = {mode: Truncations("prompt", self.prompt_limit) for mode in ("train", "eval")}

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        # text models only (fai-rl loads AutoTokenizer): a VLM processor's per-token fields would need the same cut
        here = Truncations("prompt", self.prompt_limit)
        prompt_ids = [here.cut_left(list(ids)) for ids in prompt_ids]
        mode = "train" if self.model.training else "eval"
        batch = self._once_per_prompt(here, mode)
        self._cut_since_log[mode].add(batch)
        if mode == "train":
            self.prompts_cut.add(batch)
        return prompt_ids, images, multimodal_fields

    def _once_per_prompt(self, here: Truncations, mode: str) -> Truncations:
        """This generation batch's counts over every process, each prompt once (not once per completion)."""
        import torch

        repeats = self.num_generations if mode == "train" else self.num_generations_eval
        local = torch.tensor([here.seen, here.rows, here.tokens], device=self.accelerator.device)
        seen, rows, tokens = (round(x / repeats) for x in self.accelerator.gather(local).view(-1, 3).sum(0).tolist())
        return Truncations("prompt", self.prompt_limit, seen=seen, rows=rows, tokens=tokens)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"  # as TRL's log() tells them apart
        cuts = self._cut_since_log[mode]
        if cuts.seen:  # a batch was sampled since the last log, as the Tinker driver logs (zeros included)
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: v for k, v in cuts.metrics().items()})
            self._cut_since_log[mode] = Truncations("prompt", self.prompt_limit)
        super().log(logs, start_time)


def with_prompts_cut(trainer_class, max_length: int | None):
    """trainer_class (TRL's GRPOTrainer or RLOOTrainer) with CutPrompts mixed in, cutting to `max_length` tokens."""
    return type(f"PromptsCut{trainer_class.__name__}", (CutPrompts, trainer_class), {"prompt_limit": max_length})
