"""Write the small synthetic movie-review set used by recipes/demo_sentiment.toml.

The sentences are composed from hand-written fragments (our own text, no external data),
with mixed cues and negations so a bag of words alone is not quite enough.
Run: python scripts/make_demo_data.py  (deterministic; rewrites recipes/data/demo_sentiment/)
"""

import argparse
import json
import random
from pathlib import Path

SUBJECTS = ["The film", "This movie", "The story", "The whole thing", "The sequel", "The director's new film",
            "This drama", "The comedy", "The thriller", "The documentary", "The adaptation", "The remake"]
POSITIVE = ["is a wonderful ride", "is beautifully shot and deeply moving", "kept me hooked from start to finish",
            "is funny, warm and clever", "is a true masterpiece", "delivers a brilliant final act",
            "features a superb cast", "is the best thing I have seen this year", "left me smiling for days",
            "is gripping and smart", "has a touching, honest script", "is pure joy to watch"]
NEGATIVE = ["is a tedious mess", "is painfully slow and dull", "made me check my watch every minute",
            "is lazy, loud and stupid", "is a complete waste of time", "falls apart in a boring final act",
            "wastes a talented cast", "is the worst thing I have seen this year", "left me angry and bored",
            "is predictable and shallow", "has a clumsy, awful script", "is a chore to sit through"]
POS_DETAIL = ["The acting is excellent.", "The music fits perfectly.", "Every scene feels alive.",
              "I would happily watch it again.", "The ending is perfect.", "Highly recommended.",
              "The dialogue sparkles.", "A delight for the whole family."]
NEG_DETAIL = ["The acting is wooden.", "The music is grating.", "Every scene drags on.",
              "I would never watch it again.", "The ending is ridiculous.", "Avoid it.",
              "The dialogue is embarrassing.", "Not even the kids enjoyed it."]
NEUTRAL = ["I saw it on a rainy Sunday.", "It runs for about two hours.", "My friend picked it.",
           "The trailer had promised a lot.", "It is based on a novel.", "The cinema was half empty.",
           "I went in with no expectations.", "It opened last week."]
TWISTS_POS = ["Some critics called it boring, but they are wrong.", "It is not perfect, but it is great fun.",
              "I expected to hate it, yet I loved it."]
TWISTS_NEG = ["Some critics called it brilliant, but they are wrong.", "It is not terrible, but it is not good either.",
              "I expected to love it, yet I hated it."]


def review(rng: random.Random, label: int) -> str:
    main, detail, twist = (POSITIVE, POS_DETAIL, TWISTS_POS) if label else (NEGATIVE, NEG_DETAIL, TWISTS_NEG)
    parts = [rng.choice(NEUTRAL), f"{rng.choice(SUBJECTS)} {rng.choice(main)}."]
    parts += rng.sample(detail, rng.randint(1, 3))
    if rng.random() < 0.35:
        parts.append(rng.choice(twist))
    if rng.random() < 0.5:
        parts.append(rng.choice(NEUTRAL))
    rng.shuffle(parts)
    return " ".join(parts)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and no stray arguments
    rng = random.Random(2026)
    out = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo_sentiment"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 400), ("test", 200)):
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                label = i % 2
                f.write(json.dumps({"text": review(rng, label), "label": ["neg", "pos"][label]}) + "\n")


if __name__ == "__main__":
    main()
