"""A generated news-like sample corpus, so the demo needs no download.

``write_sample_csv`` writes a CSV with a header ``id,title,body,topic`` whose bodies mix
topic words, named entities (people, organisations, places) and numbers, so every later
step (tokens, entities, topic labels) has real signal to work on. About ``duplicates`` of the
documents repeat an earlier one, as news archives do, so the demo's ``dedup`` step finds
something: a repost (the same body under another title, its case and spacing changed: an
exact duplicate once normalised) or a wire copy (the body under a dateline such as
``LONDON (Reuters) -``: a near duplicate, Jaccard about 0.9 of its 5-word shingles). It
appends a few broken lines on purpose (an empty body, a wrong column count, an unterminated
quote) so the demo also shows the quarantine. Deterministic for a given seed.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS: dict[str, dict[str, list[str]]] = {
    "World": {
        "subjects": [
            "The prime minister",
            "The foreign ministry",
            "United Nations envoys",
            "Rebel leaders",
            "The president",
        ],
        "verbs": ["called for talks with", "warned", "signed a treaty with", "condemned", "met officials from"],
        "objects": [
            "neighbouring governments",
            "the security council",
            "refugee agencies",
            "opposition parties",
            "peacekeepers",
        ],
        "words": ["election", "ceasefire", "embassy", "parliament", "sanctions", "border", "diplomats", "troops"],
    },
    "Sports": {
        "subjects": ["The home side", "The striker", "The coach", "The defending champions", "The captain"],
        "verbs": ["beat", "drew with", "signed a contract with", "lost to", "scored twice against"],
        "objects": ["their rivals", "the league leaders", "the national team", "a European club", "the visitors"],
        "words": ["season", "goal", "tournament", "match", "playoffs", "injury", "stadium", "championship"],
    },
    "Business": {
        "subjects": ["Shares of the retailer", "The central bank", "The carmaker", "Investors", "The airline"],
        "verbs": [
            "reported profits for",
            "cut forecasts for",
            "agreed to buy",
            "raised prices for",
            "announced layoffs at",
        ],
        "objects": ["the third quarter", "its European unit", "a rival chain", "oil futures", "its regional offices"],
        "words": ["earnings", "revenue", "stocks", "merger", "quarter", "inflation", "dividend", "market"],
    },
    "Sci_Tech": {
        "subjects": ["Researchers", "The software maker", "Astronomers", "The chip designer", "Engineers"],
        "verbs": ["released an update for", "discovered", "unveiled", "patched a flaw in", "launched"],
        "objects": [
            "its operating system",
            "a distant galaxy",
            "a faster processor",
            "the web browser",
            "a new satellite",
        ],
        "words": ["software", "internet", "scientists", "laboratory", "wireless", "computer", "space", "genome"],
    },
}
PEOPLE = [
    "John Smith",
    "Maria Garcia",
    "Wei Chen",
    "Angela Merkel",
    "Kofi Annan",
    "Serena Williams",
    "Bill Gates",
    "Ravi Patel",
]
ORGS = ["Microsoft", "Reuters", "the World Bank", "NASA", "Google", "Toyota", "FIFA", "the European Union"]
PLACES = ["London", "Tokyo", "Paris", "Nairobi", "Washington", "Berlin", "Sydney", "Sao Paulo"]

BROKEN_LINES = [
    'sample-broken-1,"An empty body",,World',
    'sample-broken-2,"Too many columns",text,World,extra,fields',
    'sample-broken-3,"Unterminated quote,"this body never closes its quote,Sports',
]


def _document(rng: random.Random, topic: str) -> tuple[str, str]:
    t = TOPICS[topic]
    place, person, org = rng.choice(PLACES), rng.choice(PEOPLE), rng.choice(ORGS)
    sentences = [
        f"{rng.choice(t['subjects'])} {rng.choice(t['verbs'])} {rng.choice(t['objects'])} in {place} on "
        f"{rng.choice(['Monday', 'Tuesday', 'Friday'])}.",
        f"{person} of {org} said the {rng.choice(t['words'])} and the {rng.choice(t['words'])} would matter most.",
        f"About {rng.randint(2, 950)} people followed the {rng.choice(t['words'])}, according to {rng.choice(ORGS)}.",
    ]
    rng.shuffle(sentences)
    body = " ".join(sentences[: rng.randint(2, 3)])
    title = f"{place}: {rng.choice(t['words']).title()} {rng.choice(['Update', 'Talks', 'Report', 'Deal'])}"
    return title, body


def _copy(rng: random.Random, title: str, body: str) -> tuple[str, str]:
    """A repost (another title; case and spacing changed) or a wire copy (a dateline added)."""
    if rng.random() < 0.5:
        return f"{title} (updated)", body.upper().replace(" ", "  ")
    place = rng.choice(PLACES).upper()
    return title, f"{place} ({rng.choice(['Reuters', 'AP', 'AFP'])}) - {body}"


def write_sample_csv(
    path: str | Path, n_docs: int = 2000, seed: int = 7, id_prefix: str = "sample", duplicates: float = 0.04
) -> Path:
    """Write ``n_docs`` generated documents (ids ``<id_prefix>-000000``...), about ``duplicates``
    of them copies of an earlier one, plus ``len(BROKEN_LINES)`` broken lines to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    copies = random.Random(seed + 1)  # its own stream: the other documents do not change with ``duplicates``
    written: list[tuple[str, str, str]] = []  # (title, body, topic)
    topics = sorted(TOPICS)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "body", "topic"])
        for i in range(n_docs):
            topic = topics[i % len(topics)]
            title, body = _document(rng, topic)
            if written and copies.random() < duplicates:
                title, body, topic = written[copies.randrange(len(written))]
                title, body = _copy(copies, title, body)
            written.append((title, body, topic))
            writer.writerow([f"{id_prefix}-{i:06d}", title, body, topic])
        for line in BROKEN_LINES:
            fh.write(line + "\r\n")
    tmp.replace(path)
    return path
