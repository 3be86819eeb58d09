"""Prompt templates for the judge and the meta-judge.

Templates are plain text files with ``{placeholder}`` fields. Only the named placeholders are
replaced (by plain substitution, not ``str.format``), so braces elsewhere in a template, in a
question or in a response are left alone.
"""

from __future__ import annotations

from pathlib import Path

from .backends.base import ChatPrompt, user_prompt

JUDGE_FIELDS = ("question", "response")
META_JUDGE_FIELDS = ("question", "response", "judgment_a", "judgment_b")


class TemplateError(ValueError):
    """A template file lacks a placeholder the stage fills in."""


def load_template(path: str | Path, fields: tuple[str, ...]) -> str:
    """Read a template and check that every placeholder in ``fields`` appears in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"{path}: template file not found") from None
    missing = [f for f in fields if "{" + f + "}" not in text]
    if missing:
        raise TemplateError(
            f"{path}: missing placeholder(s) {', '.join('{' + f + '}' for f in missing)}; "
            f"this template needs {', '.join('{' + f + '}' for f in fields)}"
        )
    return text


def render(template: str, **values: str) -> str:
    """Fill the placeholders in one pass, so a value containing ``{response}`` stays as is."""
    out, i = [], 0
    while i < len(template):
        for key, value in values.items():
            token = "{" + key + "}"
            if template.startswith(token, i):
                out.append(value)
                i += len(token)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def judge_prompt(template: str, question: str, response: str) -> ChatPrompt:
    """The judge's chat prompt for one (question, response); DPO judge pairs reuse it."""
    return user_prompt(render(template, question=question, response=response))


def meta_judge_prompt(
    template: str, question: str, response: str, judgment_a: str, judgment_b: str
) -> ChatPrompt:
    """The meta-judge's chat prompt comparing two judgments of one response."""
    return user_prompt(
        render(template, question=question, response=response,
               judgment_a=judgment_a, judgment_b=judgment_b)
    )
