"""docs/tutorial.md cannot rot: every ``bash`` block runs, in order, at a tiny scale on the real COVID-CT set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

# Scale every command down (epochs, images, queries, attacks) without changing what it exercises.
TINY = [
    (r"--epochs \d+", "--epochs 1"),
    (r"--n-images \d+", "--n-images 2"),
    (r"--budgets [\d,]+", "--budgets 40,80"),
    (r"--attack hsja,gbba ", "--attack hsja "),
    (r"(?m)^(\s+)n_images: \d+$", r"\1n_images: 2"),
    (r"(?m)^(\s+)budgets: \[.*\]$", r"\1budgets: [40, 80]"),
    (r"(?m)^(\s+)budget: \d+$", r"\1budget: 40"),
    (r"(?m)^(\s+)attacks: \[hsja, gbba\]$", r"\1attacks: [hsja]\n\1defenses: [none]"),
    (r"(?m)^(\s+)attacks: \[fgsm, pgd\]$", r"\1attacks: [fgsm]"),
    (r"(?m)^detection:$", "detection:\n  attacks: [hsja]"),
]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def tiny(command: str) -> str:
    for pattern, repl in TINY:
        command = re.sub(pattern, repl, command)
    return command


def test_blocks_are_found_and_scaled() -> None:
    blocks = bash_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 6 and any("medshield audit" in b for b in blocks)
    assert "--epochs 1" in tiny(blocks[0])


@pytest.mark.realdata
def test_tutorial_runs_at_tiny_scale(shared_data: Path, tmp_path: Path) -> None:
    if not (shared_data / "COVID-CT" / "Data-split").is_dir():
        pytest.skip(f"COVID-CT not found under {shared_data}")
    env = {**os.environ, "MEDSHIELD_DATA": str(shared_data), "MEDSHIELD_NO_PROGRESS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for block in bash_blocks(TUTORIAL.read_text()):
        script = tiny(block)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{script}\n{done.stderr[-2000:]}"
    assert (tmp_path / "out" / "ct_audit" / "report.html").is_file()
    assert (tmp_path / "out" / "ct_whitebox" / "whitebox.json").is_file()
