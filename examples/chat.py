"""Chat with the gateway through the official OpenAI SDK, streamed.

python examples/chat.py "What is the capital of France?"
"""

import os
import sys

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("GATEWAY_API_KEY", "no-key"),
)
question = " ".join(sys.argv[1:]) or "What is the capital of France?"
stream = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": question}],
    stream=True,
    max_tokens=128,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
