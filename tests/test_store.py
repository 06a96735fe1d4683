from pathlib import Path

from medshield.evaluation.store import RecordStore


def test_store_persists_and_skips_finished(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s.json")
    calls = []
    store.get_or_run("a", lambda: calls.append(1) or {"x": 1.5})
    again = RecordStore(tmp_path / "s.json")
    assert again.get_or_run("a", lambda: calls.append(2) or {"x": 9}) == {"x": 1.5}
    assert calls == [1] and len(again) == 1 and again.records() == [{"x": 1.5}]
