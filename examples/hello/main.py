"""The smallest useful Arachne spider.

Items go to the platform as one JSON line on stdout: {"type": "INSERT_DATA", "payload": [...]}.
Any other output is kept as the task's log. See docs/ipc.md for the whole protocol.
"""
import json
import sys
import time

QUOTES = [
    ("The world as we have created it is a process of our thinking.", "Albert Einstein"),
    ("It is our choices that show what we truly are.", "J.K. Rowling"),
    ("There are only two ways to live your life.", "Albert Einstein"),
    ("The person who doesn't read has no advantage.", "Mark Twain"),
    ("Try not to become a man of success.", "Albert Einstein"),
]


def save_items(items):
    print(json.dumps({"type": "INSERT_DATA", "payload": items}), flush=True)


def main():
    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for page in range(1, pages + 1):
        print(f"crawling page {page}/{pages}", flush=True)
        save_items([{"text": text, "author": author, "page": page} for text, author in QUOTES])
        time.sleep(0.05)
    print(f"done: {pages * len(QUOTES)} quotes", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
