"""How a prompt and a response become one token sequence — defined once, used by SFT, RM and PPO.

    <prompt> "\\nAnswer:" | " " <response> <|endoftext|>
    └── encode_prompt ──┘   └──── encode_response ─────┘

The prompt part (with the separator) is exactly what a PPO rollout starts from, and the response
part (with a leading space, so every word is its space-prefixed byte-level token, and EOS at the
end) is what SFT learns, what the reward model reads up to its EOS, and what the policy samples.
The two parts are encoded separately and concatenated, so the boundary is the same everywhere.
"""
from __future__ import annotations

SEPARATOR = "\nAnswer:"


def prompt_text(prompt: str) -> str:
    return prompt.rstrip() + SEPARATOR


def response_text(response: str) -> str:
    return " " + response.strip()


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Ids of each prompt and the separator: the context a response is generated from."""
    if not prompts:
        return []
    return [list(ids) for ids in tokenizer([prompt_text(p) for p in prompts], add_special_tokens=False)["input_ids"]]


def encode_responses(tokenizer, responses: list[str], *, eos_id: int) -> list[list[int]]:
    """Ids of each response followed by EOS."""
    if not responses:
        return []
    encoded = tokenizer([response_text(r) for r in responses], add_special_tokens=False)["input_ids"]
    return [list(ids) + [eos_id] for ids in encoded]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return encode_prompts(tokenizer, [prompt])[0]


def encode_response(tokenizer, response: str, *, eos_id: int) -> list[int]:
    return encode_responses(tokenizer, [response], eos_id=eos_id)[0]


def decode_response(tokenizer, ids, *, eos_id: int) -> str:
    """Text of generated response ids, up to (not including) the first EOS."""
    ids = [int(i) for i in ids]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
