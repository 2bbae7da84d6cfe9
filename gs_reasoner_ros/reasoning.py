"""Prompts, parsing of the model's output, and the Answer it becomes.

ROS-free. The prompts are the bytes the released model was trained with, shipped as
package data (prompts.json, provenance in ../shared/data/gs_reasoner_prompts/README.md).

Prompt ids follow the authors' `tokenizer_image_token`: the ChatML prompt is cut at `<image>`,
each side is tokenized on its own and one IMAGE_TOKEN_INDEX entry marks where the visual tokens
go. User text (question, options) is tokenized as plain text: special tokens (`<|im_end|>`) and
added tokens (`<think>`, `<bbox>`, ...) written by a user become ordinary byte pieces, so a user
can neither close the turn nor inject structure. For text without such strings the ids equal the
authors' exactly.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np

# torch-free: configuration.py imports neither torch nor the model
from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX

IMAGE_TOKEN = "<image>"
TASKS = ("spatial", "ground", "qa")


@dataclass
class GroundedBox:
    """One box the model wrote, axis-aligned in the model's (aligned) frame, metres."""

    label: str
    box_min: np.ndarray  # (3,)
    box_max: np.ndarray  # (3,)
    confidence: float = 0.0  # mean probability of the generated box tokens, 0..1
    span: tuple[int, int] | None = field(default=None, repr=False)  # "<bbox>...</bbox>" in Answer.text
    count: int | None = None  # the count the model wrote for this box's group (may disagree with the boxes)

    @property
    def center(self) -> np.ndarray:
        return (np.asarray(self.box_min) + np.asarray(self.box_max)) / 2.0

    @property
    def size(self) -> np.ndarray:
        return np.abs(np.asarray(self.box_max) - np.asarray(self.box_min))


@dataclass
class Answer:
    """What one query returns (ROS-free; the node converts it to a service response)."""

    answer: str  # the text inside <answer>
    text: str  # everything the model generated
    objects: list[GroundedBox] = field(default_factory=list)
    think: str = ""
    keyframes_used: int = 0
    timings: dict = field(default_factory=dict)  # stage -> seconds
    untrained: bool = False  # the weights are random (no checkpoint given)
    stopped: bool = False  # the caller stopped generation early (a cancelled stream)


# ---- prompts ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_prompts() -> dict[str, str]:
    """The package copy of prompts.json: keys `system`, `grounded_cot`, `direct_answer`."""
    text = resources.files("gs_reasoner_ros").joinpath("prompts.json").read_text(encoding="utf-8")
    prompts = json.loads(text)
    missing = {"system", "grounded_cot", "direct_answer"} - set(prompts)
    if missing:
        raise RuntimeError(f"package prompts.json lacks {sorted(missing)}")
    return prompts


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _instruction_pieces(question: str, options: Sequence[str], task: str) -> list[tuple[str, bool]]:
    """The instruction text T as (text, trusted) pieces; user text is untrusted.

    spatial, numeric:  grounded_cot + "\\n" + question + "\\n"
    spatial, options:  "\\n".join([grounded_cot, question, "Options:\\n" + "\\n".join(options), ""])
    ground / qa:       direct_answer + "\\n" + question
    qa, options:       "\\n".join([direct_answer, question, "Options:\\n" + "\\n".join(options), ""])
                       (our extension for planners that want a quick multiple-choice answer: the
                       release was trained on options only with the chain-of-thought prompt)
    """
    _check_task(task)
    prompts = load_prompts()
    if task == "ground" and options:
        raise ValueError("options are not used with task 'ground'")
    head = prompts["grounded_cot" if task == "spatial" else "direct_answer"] + "\n"
    if not options:
        return [(head, True), (question, False)] + ([("\n", True)] if task == "spatial" else [])
    pieces = [(head, True), (question, False), ("\nOptions:\n", True)]
    for i, option in enumerate(options):
        if i:
            pieces.append(("\n", True))
        pieces.append((option, False))
    pieces.append(("\n", True))
    return pieces


def _prompt_pieces(question: str, options: Sequence[str], task: str) -> list[tuple[str, bool] | None]:
    """The whole ChatML prompt as pieces; None marks the <image> placeholder."""
    system = load_prompts()["system"]
    head = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    return [(head, True), None, ("\n", True), *_instruction_pieces(question, options, task), (tail, True)]


def instruction_text(question: str, options: Sequence[str] = (), task: str = "spatial") -> str:
    """The instruction T of the user turn (the README's formula for the task)."""
    return "".join(text for text, _ in _instruction_pieces(question, tuple(options), task))


def chat_prompt(question: str, options: Sequence[str] = (), task: str = "spatial") -> str:
    """The full ChatML prompt string, with the literal "<image>" where the visual tokens go."""
    return "".join(IMAGE_TOKEN if p is None else p[0] for p in _prompt_pieces(question, tuple(options), task))


def encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as pure text: no special or added token is recognised.

    Runs the backend's own normalizer, pre-tokenizer and BPE model, i.e. what the tokenizer
    does to the text between added-token matches, so plain text gets identical ids.
    """
    if not text:
        return []
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
    return [tok.id for piece, _ in pieces for tok in backend.model.tokenize(piece)]


def _added_token_regex(tokenizer) -> re.Pattern | None:
    added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)  # longest first = leftmost-longest
    return re.compile("|".join(re.escape(t) for t in added)) if added else None


def _encode_trusted(tokenizer, text: str, pattern: re.Pattern | None) -> list[int | str]:
    """Split trusted text at added tokens: ids for the tokens, strings for the plain runs between."""
    out: list[int | str] = []
    pos = 0
    for m in pattern.finditer(text) if pattern is not None else ():
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append(tokenizer.convert_tokens_to_ids(m.group()))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def prompt_ids(tokenizer, question: str, options: Sequence[str] = (), task: str = "spatial") -> list[int]:
    """ChatML prompt ids with exactly one IMAGE_TOKEN_INDEX entry where the visual tokens go.

    Template text is tokenized as the authors' tokenizer does (ChatML and added tokens
    recognised); question and options are tokenized as plain text (see module docstring).
    """
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    options = tuple(options)
    if not all(isinstance(o, str) for o in options):
        raise ValueError("options must be strings")
    pattern = _added_token_regex(tokenizer)
    items: list[int | str] = []  # ids and plain-text runs, in order
    for piece in _prompt_pieces(question, options, task):
        if piece is None:
            items.append(IMAGE_TOKEN_INDEX)
        elif piece[1]:
            items.extend(_encode_trusted(tokenizer, piece[0], pattern))
        else:
            items.append(piece[0])
    ids: list[int] = []
    run = ""
    for item in items:  # adjacent text runs are one stretch between added tokens: tokenize them together
        if isinstance(item, str):
            run += item
            continue
        ids += encode_plain(tokenizer, run)
        run = ""
        ids.append(item)
    ids += encode_plain(tokenizer, run)
    return ids


# ---- parsing ------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)", re.IGNORECASE)
MAX_NAME_WORDS = 4
# "name count" right before a run of boxes: up to MAX_NAME_WORDS words of letters (no punctuation
# in between), then the integer count; both optional so "<bbox>" runs without them still parse.
_NAME_COUNT = re.compile(r"(?P<name>(?:[^\W\d][\w'\-]*[ \t]+){0,%d}[^\W\d][\w'\-]*)?[ \t]*(?P<count>\d+)?[ \t]*$"
                         % (MAX_NAME_WORDS - 1))


def _section(text: str, open_tag: str, close_tag: str, last: bool) -> str | None:
    """Text after the first (or last) open_tag up to close_tag or the end; None without open_tag."""
    start = text.rfind(open_tag) if last else text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    return text[start:] if end < 0 else text[start:end]


def _think(text: str) -> str:
    think = _section(text, "<think>", "</think>", last=False)
    if think is None:  # no opening tag: reasoning, if any, is what precedes a lone </think>
        close = text.find("</think>")
        return text[:close].strip() if close >= 0 else ""
    # A missing </think> ends the reasoning where the answer starts.
    cut = think.find("<answer>")
    return (think if cut < 0 else think[:cut]).strip()


def _answer(text: str) -> str:
    answer = _section(text, "<answer>", "</answer>", last=True)
    if answer is not None:
        return answer.strip()
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>"):].strip()
    return "" if "<think>" in text else text.strip()


def _parse_box(body: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(min, max) from "(x1, y1, z1, x2, y2, z2)"; None unless exactly six finite numbers."""
    body = body.strip()
    if body.startswith("("):
        body = body[1:]
    if body.endswith(")"):
        body = body[:-1]
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != 6 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    values = np.array([float(p) for p in parts], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return None
    a, b = values[:3], values[3:]
    return np.minimum(a, b), np.maximum(a, b)


_BOX_TAG = re.compile(r"</?bbox>")
_NAME_WINDOW = 200  # characters before a group searched for "name count" (4 words and a number)


def _box_runs(text: str) -> list[list[tuple[int, int, str]]]:
    """Complete "<bbox>body</bbox>" spans grouped into runs separated only by whitespace.

    One pass over the tags: a "<bbox>" not closed before the next "<bbox>" (or the end) is
    a truncated box and is dropped.
    """
    runs: list[list[tuple[int, int, str]]] = []
    open_at = -1
    prev_end = -1  # end of the last complete box, -1 after a dropped one
    for m in _BOX_TAG.finditer(text):
        if m.group() == "<bbox>":
            if open_at >= 0:
                prev_end = -1  # the previous box never closed
            open_at = m.start()
            continue
        if open_at < 0:
            continue  # a stray </bbox>
        box = (open_at, m.end(), text[open_at + len("<bbox>"):m.start()])
        if runs and prev_end >= 0 and not text[prev_end:open_at].strip():
            runs[-1].append(box)
        else:
            runs.append([box])
        prev_end, open_at = m.end(), -1
    return runs


def parse_boxes(text: str) -> list[GroundedBox]:
    """Every well-formed box in `text`, labelled with the "name count" written before its group.

    Tolerates multi-word names (up to 4 words, no punctuation), several groups joined by ", ",
    counts that disagree with the boxes (the boxes win), swapped corners (ordered), and drops
    partial (truncated), non-numeric and non-finite boxes; "<bbox></bbox>" yields no box.
    Linear in the length of the text.
    """
    objects: list[GroundedBox] = []
    prev_end = 0
    for run in _box_runs(text):
        start = run[0][0]
        # The name sits on the same line, after the previous group, within a few words.
        window_start = max(text.rfind("\n", max(prev_end, start - _NAME_WINDOW), start) + 1,
                           prev_end, start - _NAME_WINDOW)
        m = _NAME_COUNT.search(text, window_start, start)
        name = (m.group("name") or "").strip() if m else ""
        count = int(m.group("count")) if m and m.group("count") and len(m.group("count")) < 7 else None
        for box_start, box_end, body in run:
            corners = _parse_box(body)
            if corners is not None:
                objects.append(GroundedBox(name, corners[0], corners[1], span=(box_start, box_end), count=count))
        prev_end = run[-1][1]
    return objects


def parse_output(text: str) -> tuple[str, str, list[GroundedBox]]:
    """(think, answer, objects) from the model's generated text.

    think: inside the first <think> (up to </think>, or <answer> when </think> is missing);
    answer: after the last <answer> up to </answer> or the end (without <answer>: the text after
    </think>, or all of it when there are no tags); objects: `parse_boxes` over the whole text.
    """
    if not isinstance(text, str):
        raise ValueError(f"model output must be a string, got {type(text).__name__}")
    return _think(text), _answer(text), parse_boxes(text)


# ---- confidences --------------------------------------------------------------------


_MAX_PENDING = 8  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens


class TokenText:
    """Incremental detokenization: feed the generated ids one at a time; `text` grows and
    `spans[i]` is token i's character span in it.

    A token that ends inside a multi-byte character adds nothing until the character
    completes; all tokens of that character then share its span.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.spans: list[tuple[int, int]] = []
        self._prefix = self._read = 0  # decode from `prefix` so decoders that need left context see it

    def _decode(self, chunk) -> str:
        return self._tokenizer.decode(chunk, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def feed(self, token_id: int) -> str:
        """Append one token; returns the text it completed ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._advance(force=False)

    def _advance(self, force: bool) -> str:
        i = len(self.ids) - 1
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:i + 1])
        if now.endswith("\ufffd") and not force and i - self._read < _MAX_PENDING:
            return ""  # incomplete character: wait for the next token (a few at most: garbage never completes)
        delta = now[len(before):] if now.startswith(before) else now
        span = (len(self.text), len(self.text) + len(delta))
        self.spans.extend([span] * (i + 1 - self._read))
        self.text += delta
        self._prefix, self._read = self._read, i + 1
        return delta

    def finish(self) -> tuple[str, list[tuple[int, int]]]:
        """(text, spans) over every token fed: a character still pending is flushed, and where
        byte soup never decoded piecewise the true text is kept with the spans clamped into it."""
        if self._read < len(self.ids):
            self._advance(force=True)
        full = self._decode(self.ids)
        if self.text != full:
            self.text = full
            self.spans = [(min(s, len(full)), min(e, len(full))) for s, e in self.spans]
        return self.text, self.spans


def token_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text (special tokens skipped) and each token's character span in it (TokenText)."""
    decoded = TokenText(tokenizer)
    for i in ids:
        decoded.feed(i)
    return decoded.finish()


@dataclass
class Progress:
    """Where a streamed answer stands after one more token (boxes in the model frame)."""

    text: str  # everything decoded so far
    tokens: int  # tokens generated so far
    new_objects: list[GroundedBox]  # boxes whose </bbox> this token closed
    objects: list[GroundedBox]  # every box closed so far, in order


_CLOSE = "</bbox>"


class StreamParser:
    """parse_output as the model writes: each box is reported the moment its </bbox> closes,
    with the label and confidence the parse of the whole answer gives it (a closed box never
    changes: later text only adds boxes). Parses again only when a </bbox> appears."""

    def __init__(self, tokenizer):
        self.decoded = TokenText(tokenizer)
        self.probs: list[float] = []
        self.objects: list[GroundedBox] = []
        self._scan = 0  # where an unseen </bbox> may start

    @property
    def text(self) -> str:
        return self.decoded.text

    def feed(self, token_id: int, prob: float) -> Progress:
        self.probs.append(float(prob))
        delta = self.decoded.feed(token_id)
        text, new = self.decoded.text, []
        if delta and _CLOSE in text[self._scan:]:
            new = parse_boxes(text)[len(self.objects):]
            assign_confidences(new, self.decoded.spans, self.probs[:len(self.decoded.spans)])
            self.objects.extend(new)
        self._scan = max(0, len(text) - len(_CLOSE) + 1)
        return Progress(text, len(self.probs), new, list(self.objects))


def assign_confidences(objects: Sequence[GroundedBox], spans: Sequence[tuple[int, int]],
                       token_probs: Sequence[float]) -> None:
    """Set each box's confidence to the mean probability of the tokens overlapping its span."""
    if len(spans) != len(token_probs):
        raise ValueError(f"{len(spans)} token spans but {len(token_probs)} token probabilities")
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    probs = np.asarray(token_probs, dtype=np.float64)
    for obj in objects:
        if obj.span is None:
            continue
        hit = (starts < obj.span[1]) & (ends > obj.span[0])
        obj.confidence = float(probs[hit].mean()) if hit.any() else 0.0
        if not math.isfinite(obj.confidence):
            obj.confidence = 0.0
