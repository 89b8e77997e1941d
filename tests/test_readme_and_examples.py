"""The README's quick start runs exactly as written; every example runs;
the public surface is what ``__all__`` says, sorted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tiercache

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def run_py(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = python_blocks(quick)
    assert len(block.strip().splitlines()) <= 20
    script = tmp_path / "quick_start.py"
    script.write_text(block)
    out = run_py([str(script)], cwd=tmp_path)
    assert "{'count': 1, 'tags': {'vip'}}" in out
    assert "memory" in out and "disk" in out
    # A second run reads the sessions back from disk: the count goes on.
    out = run_py([str(script)], cwd=tmp_path)
    assert "'count': 2" in out


@pytest.mark.redis
def test_readme_several_processes_example_runs(tmp_path: Path, redis_url: str) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Several processes", 1)[1].split("\n### ", 1)[0]
    (block,) = python_blocks(section)
    assert '"redis://localhost:6379/0"' in block
    script = tmp_path / "several.py"
    script.write_text(block.replace("redis://localhost:6379/0", redis_url))
    out = run_py([str(script)], cwd=tmp_path)
    assert "'plan': 'pro'" in out and "'credits': 99" in out


def test_readme_gives_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install and run", 1)[1].split("\n## ", 1)[0]
    (bash,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [ln for ln in bash.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands == [
        "python -m pip install -e . && python examples/chat_bot.py",
        "python -m pip install -e '.[test]' && python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install -e '.[test]' --quiet && python -m pytest" in ci


def test_main_example_chat_bot(tmp_path: Path) -> None:
    args = [
        str(ROOT / "examples" / "chat_bot.py"),
        "--dir",
        str(tmp_path / "d"),
        "--updates",
        "2000",
    ]
    out = run_py(args, cwd=tmp_path)
    assert "processed 2000 updates" in out
    assert "writes avoided" in out
    assert re.search(r"flushes: .*exit \d+", out)
    assert "disk" in out


def test_session_scope_example(tmp_path: Path) -> None:
    out = run_py([str(ROOT / "examples" / "session_scope.py"), str(tmp_path / "d")], cwd=tmp_path)
    assert "rolled back" in out


@pytest.mark.redis
def test_async_example_with_and_without_redis(tmp_path: Path, redis_url: str) -> None:
    script = str(ROOT / "examples" / "async_bot.py")
    out = run_py([script, "--dir", str(tmp_path / "d")], cwd=tmp_path)
    assert "memory + disk" in out
    out = run_py([script, "--dir", str(tmp_path / "d2"), "--redis", redis_url], cwd=tmp_path)
    assert "memory + disk + redis" in out
    assert "50 concurrent updates" in out


def test_aiogram_example_runs_offline(tmp_path: Path) -> None:
    out = run_py(
        [str(ROOT / "examples" / "aiogram_bot.py"), "--dir", str(tmp_path / "d")],
        cwd=tmp_path,
        env={"BOT_TOKEN": ""},
    )
    assert "bot: Welcome, Ann (40)!" in out
    assert "rolled back" in out
    assert "signups in this chat: 1" in out
    # One write per update that changed something, none for the rest.
    assert out.count("writes: 1") == 2 and out.count("writes: 0") == 2


def test_public_all_is_sorted_and_complete() -> None:
    names = tiercache.__all__

    def isort_style(name: str) -> tuple[int, str]:
        # Constants, then classes, then functions: the order ruff's RUF022 keeps.
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(names) == sorted(names, key=isort_style)
    for name in names:
        assert hasattr(tiercache, name), name
    public = {n for n in dir(tiercache) if not n.startswith("_")}
    # Public modules (imported by other tests of the run), not names of __init__.
    modules = {"testing", "annotations", "prometheus", "otel", "aiogram", "ptb"}
    assert public - set(names) - modules == set()


def test_py_typed_is_shipped() -> None:
    assert (Path(tiercache.__file__).parent / "py.typed").exists()
