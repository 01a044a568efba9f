"""A miniature Qwen3 that can read its prompt: pretrained to repeat what the user turn holds.

The real Qwen3-0.6B is instruction-tuned, so it attends to whatever the user turn contains; a
plain language model of sentences would have no reason to look at the audio positions at all.
So the stand-in is pretrained on chat turns in the exact prompt layout of the speech model
(`PromptBuilder`), with the sentence itself where the audio will go, and the assistant turn
repeating it. The user copy is perturbed the way projected audio is imperfect: lower-cased and
unpunctuated (audio carries neither), tokens repeated (audio yields more positions than words),
and Gaussian noise added to its embeddings. (Dropping or swapping copy tokens as well was measured
to slow pretraining several-fold for no gain in stage 1, so it is not done.) A projector then only has to
produce something close enough to that copy for the LLM to read.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AddedToken,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
    get_cosine_schedule_with_warmup,
)

from tiny_audio.runtime.assembly import token_embeddings
from tiny_audio.runtime.prompts import AUDIO_TOKEN, PromptBuilder
from tiny_audio.runtime.speech_llm import IGNORE_INDEX
from tiny_audio.tokenizer import embedding_rows, train_chatml_tokenizer

_PUNCTUATION = re.compile(r"[^\w\s']")


@dataclass(frozen=True)
class LlmRecipe:
    vocab_size: int = 500  # BPE entries: small enough that most words are two or more pieces
    hidden_size: int = 128
    num_layers: int = 2  # two layers are enough for induction heads, the circuit that copies
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    steps: int = 450  # copy loss 0.02 by then; every step saved gives the encoder's pretraining a core sooner
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    # Perturbations of the user-turn copy (see the module docstring).
    plain_text_prob: float = 0.5
    repeat_prob: float = 0.2
    max_noise: float = 0.3  # embedding noise std, as a multiple of the embeddings' RMS


def build_tokenizer(sentences: Sequence[str], recipe: LlmRecipe) -> PreTrainedTokenizerBase:
    return train_chatml_tokenizer(sentences, recipe.vocab_size)


def build_llm(tokenizer: PreTrainedTokenizerBase, recipe: LlmRecipe, seed: int) -> Qwen3ForCausalLM:
    # The ignores: transformers types the id of one token as `int | list[int]`.
    pad_id: int = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # type: ignore[assignment]
    eos_id: int = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[assignment]
    config = Qwen3Config(
        vocab_size=embedding_rows(len(tokenizer)),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.hidden_size // recipe.num_heads,
        intermediate_size=recipe.intermediate_size,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        rms_norm_eps=1e-6,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    return model


class CopyTask:
    """Chat turns in the speech prompt's layout with a perturbed sentence where the audio goes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, recipe: LlmRecipe) -> None:
        # The speech model adds `<audio>` the same way; here it only marks where the copy goes.
        tokenizer.add_tokens([AddedToken(AUDIO_TOKEN, special=True, normalized=False)], special_tokens=True)
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer)
        template = self.prompts.prompt_ids(1)
        split = template.index(self.prompts.audio_token_id)
        self.before, self.after = template[:split], template[split + 1 :]
        self.recipe = recipe

    def example(self, sentence: str, rng: random.Random) -> tuple[list[int], list[int], list[bool]]:
        """(input ids, labels, which positions hold the copy) for one sentence."""
        recipe = self.recipe
        source = plain_words(sentence) if rng.random() < recipe.plain_text_prob else sentence
        copy: list[int] = []
        for token in self.tokenizer(source, add_special_tokens=False)["input_ids"]:
            copy.extend([token] * (1 + (rng.random() < recipe.repeat_prob) * rng.randint(1, 2)))
        prompt = [*self.before, *copy, *self.after]
        target = self.prompts.target_ids(sentence)
        in_copy = [False] * len(self.before) + [True] * len(copy) + [False] * (len(self.after) + len(target))
        return prompt + target, [IGNORE_INDEX] * len(prompt) + target, in_copy

    def batch(self, sentences: Sequence[str], rng: random.Random) -> dict[str, Tensor]:
        rows = [self.example(s, rng) for s in sentences]
        width = max(len(ids) for ids, _, _ in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        in_copy = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row_ids, row_labels, row_copy) in enumerate(rows):
            n = len(row_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row_ids), torch.tensor(row_labels), 1
            in_copy[i, :n] = torch.tensor(row_copy)
        noise = torch.tensor([rng.uniform(0, self.recipe.max_noise) for _ in rows])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "in_copy": in_copy, "noise": noise}


def plain_words(sentence: str) -> str:
    """What speech carries of a sentence: lower-case words, no punctuation."""
    return " ".join(_PUNCTUATION.sub(" ", sentence).lower().split())


def copy_loss(model: Qwen3ForCausalLM, batch: dict[str, Tensor]) -> Tensor:
    embeddings = token_embeddings(model)
    embeds = embeddings(batch["input_ids"])  # B, T, H
    rms = embeddings.weight.detach().pow(2).mean().sqrt()
    noise = torch.randn_like(embeds) * (batch["noise"][:, None, None] * rms)
    embeds = embeds + noise * batch["in_copy"][..., None]
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def pretrain_llm(
    model: Qwen3ForCausalLM,
    task: CopyTask,
    sentences: Sequence[str],
    recipe: LlmRecipe,
    seed: int,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Train on the copy task; returns the loss of every `log_every` window."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=0.0, betas=(0.9, 0.95), fused=True
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    model.train()
    losses, window = [], []
    log_every = max(1, recipe.steps // 10)
    for step in range(1, recipe.steps + 1):
        loss = copy_loss(model, task.batch(rng.sample(sentences, recipe.batch_size), rng))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == recipe.steps:
            losses.append(sum(window) / len(window))
            log(f"  LLM step {step}/{recipe.steps} | copy loss {losses[-1]:.3f}")
            window = []
    model.eval()
    return losses


@torch.no_grad()
def copy_accuracy(model: Qwen3ForCausalLM, task: CopyTask, sentences: Sequence[str], plain: bool = True) -> float:
    """Share of sentences the LLM repeats exactly, given the (plain-word) sentence in the user turn."""
    correct = 0
    for sentence in sentences:
        source = plain_words(sentence) if plain else sentence
        ids = [*task.before, *task.tokenizer(source, add_special_tokens=False)["input_ids"], *task.after]
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=task.prompts.end_of_turn_id
        )
        # The ignore: transformers types the text of one sequence as `str | list[str]`.
        text: str = task.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)  # type: ignore[assignment]
        correct += plain_words(text) == plain_words(sentence)
    return correct / max(len(sentences), 1)
