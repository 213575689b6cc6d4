"""Planted cases: raw "web" documents whose fate is known, built from the embedded corpus's prose.

The kinds a curation stage must tell apart:

- ``near_duplicate``: a paragraph with a given share of its words replaced (an edit, not a new text);
- ``spliced``: sentences of three different paragraphs, prose that is in no reference document;
- ``shuffled`` / ``boilerplate`` / ``random_characters``: the junk GPT-3's classifier was for;
- ``leaked``: a spliced document with an evaluation passage (at least 13 words) inside it;
- ``page_copy``: a whole embedded page with up to 5% of its words replaced (a cross-source duplicate).

Everything is seeded. ``python -m orchestrator.data.curation.planted --out recipes/data`` writes the
raw source and the evaluation file that ``recipes/gpt3-data.yaml`` reads, byte for byte the same
on every run (the tests check the shipped copies).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import string
from pathlib import Path

from orchestrator.data.corpus import embedded_files

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
BOILERPLATE = (
    "Home | About us | Contact | Privacy policy | Terms of use | Sitemap",
    "This website uses cookies to improve your experience. Accept all cookies or manage your preferences.",
    "Click here to subscribe to our newsletter and never miss a deal! Limited time offer.",
    "Copyright {year} {company}. All rights reserved. Powered by {company} CMS.",
    "Login | Register | Forgot password? | My cart (0 items) | Checkout",
    "Share this post: Facebook Twitter Pinterest Email WhatsApp",
    "Best price {product} buy now free shipping {product} cheap {product} discount sale",
    "Page {page} of {pages} | Next » | « Previous | Jump to page",
)
FILLERS = {"year": ["2009", "2014", "2019", "2021"], "company": ["Acme", "WebCorp", "SiteWorks", "Globex"],
           "product": ["shoes", "phone case", "vitamins", "sunglasses"], "page": ["2", "3", "7"],
           "pages": ["9", "12", "40"]}


def paragraphs(*, minimum_words: int = 30, files: tuple[str, ...] = ("tutorial", "library")) -> list[str]:
    """Distinct paragraphs of at least ``minimum_words`` words from the embedded corpus, in file order."""
    seen, result = set(), []
    for name in files:
        with gzip.open(embedded_files(name)[0], "rt", encoding="utf-8") as handle:
            for line in handle:
                for paragraph in json.loads(line)["text"].split("\n\n"):
                    if len(paragraph.split()) >= minimum_words and paragraph not in seen:
                        seen.add(paragraph)
                        result.append(paragraph)
    return result


def near_duplicate(text: str, *, fraction: float, rng: random.Random, vocabulary: list[str]) -> str:
    """``text`` with ⌊fraction × words⌋ distinct words replaced by other words of ``vocabulary``."""
    tokens = text.split()
    for position in rng.sample(range(len(tokens)), k=int(fraction * len(tokens))):
        replacement = rng.choice(vocabulary)
        while replacement == tokens[position]:
            replacement = rng.choice(vocabulary)
        tokens[position] = replacement
    return " ".join(tokens)


def spliced(sources: list[str], *, rng: random.Random) -> str:
    """Two or three sentences from each of ``sources``, joined: new prose in the sources' style."""
    sentences = []
    for text in sources:
        parts = [s for s in SENTENCE_END.split(text) if s.strip()]
        start = rng.randrange(max(1, len(parts) - 2))
        sentences += parts[start:start + rng.choice((2, 3))]
    return " ".join(sentences)


def shuffled(text: str, *, rng: random.Random) -> str:
    tokens = text.split()
    rng.shuffle(tokens)
    return " ".join(tokens)


def boilerplate(*, rng: random.Random, lines: int = 6) -> str:
    chosen = [rng.choice(BOILERPLATE) for _ in range(lines)]
    return "\n".join(line.format(**{k: rng.choice(v) for k, v in FILLERS.items()}) for line in chosen)


def random_characters(*, rng: random.Random, words: int = 80) -> str:
    alphabet = string.ascii_letters + string.digits + "#$%&*+-/<=>@^_~"
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 10))) for _ in range(words))


def benchmark_item(*, rng: random.Random, vocabulary: list[str]) -> str:
    """A made-up evaluation passage of 20 to 30 words (a "reading comprehension" item)."""
    body = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(20, 30)))
    return f"Passage: {body}."


def leaked(text: str, item: str, *, rng: random.Random) -> str:
    """``item`` (an evaluation passage) inserted between two sentences of ``text``."""
    parts = SENTENCE_END.split(text)
    cut = rng.randint(0, len(parts))
    return " ".join(parts[:cut] + [item.removeprefix("Passage: ")] + parts[cut:])


def vocabulary_of(texts: list[str]) -> list[str]:
    """The distinct alphabetic words of ``texts``, sorted (a stable list to draw edits from)."""
    return sorted({w for t in texts for w in t.split() if w.isalpha()})


def embedded_pages(name: str = "tutorial") -> list[str]:
    with gzip.open(embedded_files(name)[0], "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def raw_sample(*, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(raw documents with their ``kind``, benchmark rows) for the gpt3-data recipe: prose that is
    in no reference document (spliced), its near and exact copies (duplicates within the source),
    near copies of whole embedded pages (duplicates across sources), leaked prose and junk."""
    rng = random.Random(seed)
    pool = paragraphs()
    vocabulary = vocabulary_of(pool[:2000])
    items = [benchmark_item(rng=rng, vocabulary=vocabulary) for _ in range(60)]
    prose = [spliced(rng.sample(pool, 3), rng=rng) for _ in range(400)]
    docs = [{"kind": "spliced", "text": text} for text in prose]
    docs += [{"kind": "near_duplicate", "text": near_duplicate(text, fraction=rng.uniform(0.02, 0.1), rng=rng,
                                                              vocabulary=vocabulary)} for text in prose[:120]]
    docs += [{"kind": "exact_duplicate", "text": text} for text in prose[120:160]]
    docs += [{"kind": "page_copy", "text": near_duplicate(page, fraction=rng.uniform(0.0, 0.05), rng=rng,
                                                         vocabulary=vocabulary)}
             for page in rng.sample(embedded_pages(), 20)]
    docs += [{"kind": "leaked", "text": leaked(spliced(rng.sample(pool, 3), rng=rng), items[i % 30], rng=rng)}
             for i in range(60)]
    docs += [{"kind": "shuffled", "text": shuffled(rng.choice(pool), rng=rng)} for _ in range(150)]
    docs += [{"kind": "boilerplate", "text": boilerplate(rng=rng)} for _ in range(150)]
    docs += [{"kind": "random_characters", "text": random_characters(rng=rng)} for _ in range(150)]
    rng.shuffle(docs)
    return docs, [{"id": i, "passage": item} for i, item in enumerate(items)]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a timestamp or file name, so the same rows give the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as handle:
        handle.write(data)
    return buffer.getvalue()


def write_sample(out_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    """``raw-crawl.jsonl.gz`` and ``benchmark.jsonl`` in ``out_dir``."""
    docs, items = raw_sample(seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"raw": out_dir / "raw-crawl.jsonl.gz", "benchmark": out_dir / "benchmark.jsonl"}
    paths["raw"].write_bytes(gzip_bytes(jsonl_bytes(docs)))
    paths["benchmark"].write_bytes(jsonl_bytes(items))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("recipes/data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_sample(args.out, seed=args.seed).values():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
