"""The one prompt builder, used by training (collator) and by inference (transcribe/generate).

The chat template is rendered once with a single `<audio>` placeholder; each sample's prompt
then repeats that token id as many times as its projector emits embeddings.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

AUDIO_TOKEN = "<audio>"
END_OF_TURN = "<|im_end|>"  # ChatML closes every turn with it; generation stops on it
INSTRUCTION = "Transcribe the audio."


def build_messages(transcript: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": f"{AUDIO_TOKEN}\n{INSTRUCTION}"}]
    if transcript is not None:
        messages.append({"role": "assistant", "content": transcript})
    return messages


class PromptBuilder:
    """Token ids of prompts (with n audio tokens) and of training targets."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.audio_token_id = _single_id(tokenizer, AUDIO_TOKEN)
        self.end_of_turn_id = _single_id(tokenizer, END_OF_TURN)
        # Qwen3 reads enable_thinking only as an apply_chat_template argument; with it off the
        # assistant turn opens with an empty think block, in training and inference alike.
        text = tokenizer.apply_chat_template(
            build_messages(), tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(self.audio_token_id) != 1:
            raise ValueError(
                f"the chat template must keep exactly one {AUDIO_TOKEN} token; got {ids.count(self.audio_token_id)}"
            )
        split = ids.index(self.audio_token_id)
        self._before, self._after = ids[:split], ids[split + 1 :]

    def prompt_ids(self, n_audio_tokens: int) -> list[int]:
        return [*self._before, *[self.audio_token_id] * n_audio_tokens, *self._after]

    def target_ids(self, transcript: str) -> list[int]:
        return [*self.tokenizer(transcript, add_special_tokens=False)["input_ids"], self.end_of_turn_id]


def _single_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"tokenizer must know {token!r} as one special token; it splits it into {ids}")
    return ids[0]
