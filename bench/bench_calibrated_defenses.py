"""Calibrated RND/DND (issue 22): their test-split cost and HSJA's median L2 against them vs undefended.

For each run: ``medshield blackbox`` with ``--defense none,rnd,dnd`` (rnd/dnd without parameters are
calibrated to ``--max-clean-drop`` on the validation split), then one table row per defense with the
chosen setting, the test-split accuracy/sensitivity drop (± one paired standard error) and HSJA's median
L2 at the budget, with its ratio to the undefended median.

    python bench/bench_calibrated_defenses.py RUN [RUN...] --data-dir ../shared/data --budget 5000 --n-images 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medshield import api
from medshield.defenses.inference import DefenseSpec
from medshield.evaluation.calibration import CalibrationConfig, Tolerance


def row(run: str, rec: dict, none_l2: float) -> str:
    cal = rec.get("calibration") or {}
    test = cal.get("test", {})
    cost = (f"{100 * test['accuracy_drop']:+.2f} ± {100 * test['accuracy_drop_se']:.2f} | "
            f"{100 * test['sensitivity_drop']:+.2f} ± {100 * test['sensitivity_drop_se']:.2f}") if test else "– | –"
    ratio = rec["median_l2"] / none_l2 if none_l2 else float("nan")
    return (f"| {Path(run).name} | `{rec['defense_spec']}` | {cost} | {rec['median_l2']:.3f} | {ratio:.2f}x | "
            f"{rec.get('success_rate', float('nan')):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--n-images", type=int, default=10)
    p.add_argument("--max-clean-drop", type=float, default=0.01)
    p.add_argument("--out", default="calibrated_defenses")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    a = p.parse_args()
    print("| run | defense (chosen) | test acc drop (pts) | test sens drop (pts) | HSJA median L2 | vs none | "
          "fools undefended |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for run in a.runs:
        summary = api.blackbox(run, Path(a.out) / Path(run).name, data_dir=a.data_dir, attacks=["hsja"],
                               budgets=[a.budget], n_images=a.n_images,
                               defenses=[DefenseSpec.parse(d) for d in ("none", "rnd", "dnd")],
                               calibration=CalibrationConfig(tolerance=Tolerance.of(a.max_clean_drop)))
        recs = [r for r in summary["records"] if r["budget"] == a.budget]
        none_l2 = next(r["median_l2"] for r in recs if r["defense_spec"] == "none")
        for rec in recs:
            print(row(run, rec, none_l2), flush=True)
            rows.append({"run": Path(run).name, **{k: rec.get(k) for k in ("defense_spec", "median_l2", "success_rate",
                                                                          "calibration")}})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
