"""How a prompt and a response become one token sequence — defined once, used by SFT, RM and PPO.

    <prompt> "\\nAnswer:" | " " <response> <|endoftext|>
    └── encode_prompt ──┘   └──── encode_response ─────┘

The prompt part (with the separator) is exactly what a PPO rollout starts from, and the response
part (with a leading space, so every word is its space-prefixed byte-level token, and EOS at the
end) is what SFT learns, what the reward model reads up to its EOS, and what the policy samples.
The two parts are encoded separately and concatenated, so the boundary is the same everywhere.

The join is ``data.template``, one string with ``{prompt}`` and then ``{response}``: the default
``"{prompt}\\nAnswer: {response}"`` is the layout above. The text before ``{response}`` ends the
prompt part, except its trailing whitespace, which starts the response part (so a response's first
word is its space-prefixed token, as the model samples it); text after ``{response}`` comes before EOS.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

DEFAULT_TEMPLATE = "{prompt}\nAnswer: {response}"
SEPARATOR = "\nAnswer:"
"""The default template's text between the prompt and the response's leading space."""


@dataclass(frozen=True)
class Template:
    """``data.template`` split at its boundary: ``prompt_text(p) + response_text(r)`` is the whole text."""

    before: str
    """Text before ``{prompt}``."""
    separator: str
    """Text between ``{prompt}`` and ``{response}``, without its trailing whitespace."""
    lead: str
    """The trailing whitespace before ``{response}`` (the response part's start)."""
    after: str
    """Text after ``{response}`` (before EOS)."""

    @classmethod
    def parse(cls, text: str) -> "Template":
        """``Template.parse("{prompt}\\nAnswer: {response}")`` → before "", separator "\\nAnswer:", lead " "."""
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        if fields != ["prompt", "response"]:
            raise ValueError(f"must hold {{prompt}} and then {{response}}, once each and no other field (found "
                             f"{fields}); write a literal brace as {{{{ or }}}}, e.g. {DEFAULT_TEMPLATE!r}")
        head, tail = text.split("{response}")
        before, middle = head.split("{prompt}")
        separator = middle.rstrip()
        unescape = lambda part: part.replace("{{", "{").replace("}}", "}")  # noqa: E731
        return cls(before=unescape(before), separator=unescape(separator), lead=middle[len(separator):],
                   after=unescape(tail))

    def prompt_text(self, prompt: str) -> str:
        return self.before + prompt.rstrip() + self.separator

    def response_text(self, response: str) -> str:
        return self.lead + response.strip() + self.after


DEFAULT = Template.parse(DEFAULT_TEMPLATE)


def prompt_text(prompt: str, template: Template = DEFAULT) -> str:
    return template.prompt_text(prompt)


def response_text(response: str, template: Template = DEFAULT) -> str:
    return template.response_text(response)


def encode_prompts(tokenizer, prompts: list[str], *, template: Template = DEFAULT) -> list[list[int]]:
    """Ids of each prompt and the separator: the context a response is generated from."""
    if not prompts:
        return []
    texts = [template.prompt_text(p) for p in prompts]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_responses(tokenizer, responses: list[str], *, eos_id: int, template: Template = DEFAULT) -> list[list[int]]:
    """Ids of each response followed by EOS."""
    if not responses:
        return []
    encoded = tokenizer([template.response_text(r) for r in responses], add_special_tokens=False)["input_ids"]
    return [list(ids) + [eos_id] for ids in encoded]


def encode_prompt(tokenizer, prompt: str, *, template: Template = DEFAULT) -> list[int]:
    return encode_prompts(tokenizer, [prompt], template=template)[0]


def encode_response(tokenizer, response: str, *, eos_id: int, template: Template = DEFAULT) -> list[int]:
    return encode_responses(tokenizer, [response], eos_id=eos_id, template=template)[0]


def decode_response(tokenizer, ids, *, eos_id: int) -> str:
    """Text of generated response ids, up to (not including) the first EOS."""
    ids = [int(i) for i in ids]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
