#!/usr/bin/env python3
"""Time to first token of a chat's next turn with and without the prompt cache.

Against a running `bigmoe serve` (one slot, a context that holds the history): for each history
length, a prompt of that many tokens is sent cold (nothing cached), then the next turn (the
history, the answer and a new question) is sent: its prompt_ms and cached_tokens are what the
cache saved. Prints a markdown table.

usage: scripts/bench_prompt_cache.py URL HISTORY_TOKENS...
"""
import json
import sys
import time
import urllib.request

WORDS = ["river", "stone", "light", "garden", "window", "morning", "silver", "paper",
         "forest", "engine", "summer", "bridge", "letter", "market", "winter", "castle"]


def post(url, path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=7200) as r:
        return json.loads(r.read())


def text_of(url, n, variant):
    words = " ".join(WORDS[(i * 7 + i // 16 + variant * 5) % 16] for i in range(n * 2 + 8))
    toks = post(url, "/tokenize", {"content": f"Document {variant}. Read it:\n{words}"})["tokens"][:n]
    return post(url, "/detokenize", {"tokens": toks})["content"]


def turn(url, prompt):
    t0 = time.time()
    r = post(url, "/v1/completions", {"prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True})
    wall = time.time() - t0
    return r, wall


def main():
    url = sys.argv[1]
    print("| history tokens | cold: prompt tokens | cold TTFT s | next turn: prompt tokens | cached | "
          "next turn TTFT s | share of cold |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, n in enumerate(int(a) for a in sys.argv[2:]):
        history = text_of(url, n, 100 + i)
        cold, _ = turn(url, history)
        nxt, _ = turn(url, history + cold["choices"][0]["text"] + "\nUser: and then?\nAssistant:")
        c_ms, n_ms = cold["timings"]["prompt_ms"], nxt["timings"]["prompt_ms"]
        print(f"| {n} | {cold['usage']['prompt_tokens']} | {c_ms / 1000:.2f} | {nxt['usage']['prompt_tokens']} | "
              f"{nxt['usage']['prompt_tokens_details']['cached_tokens']} | {n_ms / 1000:.3f} | "
              f"{100 * n_ms / c_ms:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
