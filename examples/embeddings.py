"""Rank sentences by similarity with the embedding model.

python examples/embeddings.py
"""

import math
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("GATEWAY_API_KEY", "no-key"),
)
query = "a cat"
candidates = ["a kitten", "a stock market crash", "a small feline pet"]
response = client.embeddings.create(model="all-minilm-l6-v2", input=[query, *candidates])
vectors = [d.embedding for d in response.data]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=False)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


for text, vector in sorted(
    zip(candidates, vectors[1:], strict=False), key=lambda p: -cosine(vectors[0], p[1])
):
    print(f"{cosine(vectors[0], vector):.3f}  {text}")
