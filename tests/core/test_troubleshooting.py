"""README's troubleshooting table quotes the messages users see: each quoted fixed text is still in the code."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_quoted_message_is_in_the_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    sources = " ".join(
        " ".join(p.read_text().split()) for folder in ("mtgrpo", "sagemaker_training") for p in (ROOT / folder).rglob("*.py")
    )
    # The third column of each table row; its backticked parts are fixed text (PATH, N, URL stand for values).
    rows = [line.split(" | ")[-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 20
    missing = []
    for row in rows:
        for quoted in re.findall(r"`([^`]+)`", row):
            for piece in re.split(r"\b(?:PATH|N|URL)\b|--num-node[s]?\b.*|'code_tests_passed'|'tests'|max_completion_length=0|max_steps: 'many' is not", quoted):
                piece = piece.strip(" .:,")
                if len(piece) > 6:
                    missing.append((row, piece)) if piece not in sources else None
    assert not missing, missing
