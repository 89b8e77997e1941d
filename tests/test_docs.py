"""Every code block of the guides in docs/ runs: each guide's Python blocks
in order as one script, then its shell blocks (``tiercache`` commands) one
by one, against a private redis-server; and the README links every guide."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiercache.testing import RedisServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
DOC_URL = "redis://localhost:6379/0"

#: What each guide's script prints (its comments say so too).
EXPECTED = {
    "tiers-and-flush.md": ["['memory', 'disk']", "['memory', 'redis', 'bus']", "1\n0\n"],
    "processes.md": [
        "{'lang': 'en'}",
        "{'lang': 'de'}",
        "{'plan': 'pro', 'credits': 9}",
        "conflict: ConflictError",
        "\n5\n",
        "\n2\n",
        "{'plan': 'pro', 'credits': 99}",
    ],
    "failures.md": ["True 1", "TierError: TierError", "{'n': 2} False", "None 1"],
    "integrations.md": [
        "message 1 from chat 42",
        "{'history': ['hello']}",
        "{'visits': Counter(1)} 2",
        "{'theme': 'dark'}",
        "{'theme': 'dark', 'lang': 'de'}",
    ],
    "operating.md": ['tiercache_flushes_total{namespace="mybot",reason="exit"} 3.0', "True True"],
}


def blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", markdown, flags=re.S)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def test_every_guide_is_expected_and_linked() -> None:
    assert set(GUIDES) == set(EXPECTED)
    index = (DOCS / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "docs/README.md" in readme
    for guide in GUIDES:
        assert f"({guide})" in index, guide
        assert f"(docs/{guide})" in readme, guide


def _needs_redis(guide: str) -> bool:
    text = (DOCS / guide).read_text()
    return DOC_URL in text or "RedisServer" in text


@pytest.mark.parametrize(
    "guide",
    [pytest.param(g, marks=[pytest.mark.redis] if _needs_redis(g) else []) for g in GUIDES],
)
def test_the_guide_runs_as_written(
    guide: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    text = (DOCS / guide).read_text()
    url = request.getfixturevalue("server").url if _needs_redis(guide) else DOC_URL
    python = blocks(text, "python")
    assert python, f"{guide} has no code"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "guide.py"
    script.write_text("\n".join(python).replace(DOC_URL, url))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in EXPECTED[guide]:
        assert expected in proc.stdout, f"{expected!r} not in:\n{proc.stdout}"
    for block in blocks(text, "bash"):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            args = shlex.split(line.replace(DOC_URL, url))
            assert args[0] == "tiercache"
            done = subprocess.run(
                [sys.executable, "-m", "tiercache", *args[1:]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
