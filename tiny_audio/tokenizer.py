"""A byte-level BPE tokenizer laid out like Qwen3's, trained on text the project generates.

Same pre-tokenizer regex, the same ChatML special tokens in the same order, and a chat template
that renders prompts exactly as Qwen3's does with thinking off, so prompts built for the tiny and
miniature models have the real layout.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen3's pre-tokenizer regex: contractions, letters with one leading non-letter, single digits,
# punctuation runs, newlines, spaces.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TINY_BPE_VOCAB = 995  # + 5 added tokens = 1000

# ChatML as Qwen3 renders it: assistant turns after the last user turn open with a (here always
# empty) think block, and `enable_thinking=false` puts the same empty block in the generation
# prompt, so a training target and an inference prompt agree up to the transcript.
CHAT_TEMPLATE = """\
{%- set ns = namespace(last_user=-1) -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
{{- '<|im_start|>' + message.role + '\\n' -}}
{%- if message.role == 'assistant' and loop.index0 > ns.last_user -%}
{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- endif -%}
{{- message.content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- endif -%}
{%- endif -%}
"""


def train_chatml_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `vocab_size` entries before the five ChatML/think tokens Qwen3 adds."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    # Qwen3 numbers its added tokens after the BPE vocabulary (endoftext, im_start, im_end, ...) and
    # keeps <think>/</think> non-special, so decoding with skip_special_tokens leaves them in.
    bpe.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    bpe.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=131_072,
        chat_template=CHAT_TEMPLATE,
    )


def embedding_rows(n_tokens: int, multiple: int = 64, spare: int = 8) -> int:
    """Embedding rows with room for a few more special tokens (e.g. `<audio>`) without resizing,
    as Qwen3-0.6B has 151,936 rows for its 151,669 tokens."""
    return -(-(n_tokens + spare) // multiple) * multiple
