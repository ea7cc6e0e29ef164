"""One /v1 chat completion through the official `openai` client, for scripts/container-test.

usage: v1_check.py BASE_URL TOKEN

Asks the demo model (the image's default provider without an API key) and checks that an
answer and its token usage came back; prints the answer's first line.
"""

import sys

from openai import OpenAI


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key=token, max_retries=0, timeout=30)
    models = [m.id for m in client.models.list().data]
    assert "gpt-4o-mini" in models, models
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "你好，容器"}]
    )
    text = r.choices[0].message.content or ""
    assert text.strip(), r
    assert r.usage is not None and r.usage.total_tokens > 0, r
    print(text.splitlines()[0][:120])
    return 0


if __name__ == "__main__":
    sys.exit(main())
