"""Progress when output is not a terminal: rate-limited timestamped lines with done/total and an ETA."""

from __future__ import annotations

import io
import re

import pytest

from medshield.progress import LineProgress, format_duration, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_are_rate_limited_and_carry_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = LineProgress("white-box pgd", total=100, stream=out, interval=10, clock=clock)
    for _ in range(25):  # 25 steps in 6.25 s: no line yet
        clock.t += 0.25
        p(1)
    assert out.getvalue() == ""
    for _ in range(15):  # one line at 10 s
        clock.t += 0.25
        p(1, info="acc 0.40")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d white-box pgd: 40/100 \(40%\), 10s elapsed, ETA 15s \[acc 0.40\]$",
                    lines[0]), lines[0]


def test_unknown_total_has_no_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = LineProgress("queries", total=None, stream=out, interval=0, clock=clock)
    clock.t = 3
    p(7)
    assert out.getvalue().strip().endswith("queries: 7, 3s elapsed")


def test_durations() -> None:
    assert format_duration(12.4) == "12s"
    assert format_duration(222) == "3m42s"
    assert format_duration(3720) == "1h02m"


def test_redirected_output_gets_a_final_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MEDSHIELD_NO_PROGRESS", raising=False)
    with progress_bar("attack", total=4) as advance:
        for _ in range(4):
            advance(1)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].split(" ", 2)[2].startswith("attack: 4/4 (100%)")


def test_disabled_prints_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MEDSHIELD_NO_PROGRESS", "1")
    with progress_bar("attack", total=4) as advance:
        advance(4)
    assert capsys.readouterr().err == ""


def test_final_line_not_repeated() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = LineProgress("epoch", total=2, stream=out, interval=1, clock=clock)
    clock.t = 2
    p(2)  # rate-limited line at 2/2
    p.finish()  # nothing new to say
    assert len(out.getvalue().splitlines()) == 1
