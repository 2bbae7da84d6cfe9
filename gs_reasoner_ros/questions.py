"""The rules a question must meet, in one place: the services (through
gs_reasoner_ros.pipeline.queries) and the Reasoner's own API check questions with these.

A question is text of at most max_question_chars characters (options included), with at most
MAX_OPTIONS multiple-choice options, for one of the prompt tasks, and a token budget: 0 or None
for the task's default, else 1..max_new_tokens_cap.
"""
from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np

from .reasoning import TASKS

# Decoding budgets. The authors use 512 for grounding/QA and 8192 for VSI-Bench chain of thought;
# 1024 covers typical grounded CoT answers at an eighth of the worst-case latency. Callers may
# raise it up to MAX_NEW_TOKENS_CAP.
DEFAULT_MAX_NEW_TOKENS = {"spatial": 1024, "ground": 512, "qa": 512}
MAX_NEW_TOKENS_CAP = 8192
MAX_QUESTION_CHARS = 4000  # question plus options; the released prompts are ~1.6 k characters
MAX_OPTIONS = 26  # A-Z


def clean_text(text: str, limit: int, what: str) -> str:
    """Strip, drop control characters other than newline/tab, enforce the length limit.
    (Special-token neutralisation is the prompt builder's job, on the exact ids.)"""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text")
    if len(text) > limit:
        raise ValueError(f"{what} has {len(text)} characters; the limit is {limit} (max_question_chars)")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C").strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return text


def check_query(question: str, options: Sequence[str] = (), task: str = "spatial", max_new_tokens: int | None = None,
                *, max_question_chars: int = MAX_QUESTION_CHARS, max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP) -> int:
    """Validate a query (ValueError naming the problem); returns the max_new_tokens to use.

    max_new_tokens None or 0 means DEFAULT_MAX_NEW_TOKENS[task] (0 is the services' "default").
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    options = list(options)
    if not all(isinstance(o, str) for o in options):
        raise ValueError("options must be strings")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} options, got {len(options)}")
    if options and task == "ground":
        raise ValueError("options are not used with task 'ground'")
    length = len(question) + sum(len(o) for o in options)
    if length > max_question_chars:
        raise ValueError(f"question and options are {length} characters; the limit is {max_question_chars}")
    if max_new_tokens is None or max_new_tokens == 0:
        return min(DEFAULT_MAX_NEW_TOKENS[task], max_new_tokens_cap)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= max_new_tokens_cap:
        raise ValueError(f"max_new_tokens must be in 1..{max_new_tokens_cap}, got {max_new_tokens}")
    return int(max_new_tokens)


