"""Writes the text example's data: the Python standard library's ``pydoc_data`` help topics (79
texts, about 465 000 characters, bundled with Python) as ``.txt`` files, dealt round-robin to the
client shards, with a few held out.

    python -m examples.text_module.prepare --out /tmp/text --shards 4
"""

from __future__ import annotations

from pathlib import Path

from examples.shards import fresh_folders, parser

HERE = Path(__file__).parent


def main() -> None:
    from pydoc_data.topics import topics

    p = parser(__doc__, HERE, model=False)
    p.add_argument("--max-chars", type=int, default=120_000, help="text per shard at most (keeps rounds short)")
    args = p.parse_args()
    folders = [folder for _, folder in fresh_folders(args.out, args.shards)]  # the shards, then held-out
    written = [0] * len(folders)
    for i, (name, text) in enumerate(sorted(topics.items())):
        target = i % len(folders)
        if written[target] + len(text) > args.max_chars:
            continue
        (folders[target] / f"{name}.txt").write_text(text, encoding="utf-8")
        written[target] += len(text)
    print(f"{args.out}: {args.shards} shards + held-out, {sum(written)} characters")


if __name__ == "__main__":
    main()
