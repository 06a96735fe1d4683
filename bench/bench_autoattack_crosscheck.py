"""Our APGD-CE / AutoAttack vs the reference AutoAttack code (``pyautoattack``) on a trained run's test
images: robust accuracy of each on the same model, images and eps (the check of the slow test
``tests/test_autoattack_crosscheck.py``, which trains its own model and uses 30 images, on an existing run).

The reference attacks the 2-class model padded with 8 constant -1000 logits (its targeted members need 10
classes). ``--targets 1`` runs its APGD-T and FAB-T against the one reachable target class instead of the
standard version's 9 (8 of which are unreachable padding): the same attack, 9x cheaper.

    OMP_NUM_THREADS=1 python bench/bench_autoattack_crosscheck.py --run RUN --data-dir DATA --n 100 \
        --eps 1/255,2/255 --targets 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medshield.api import load_run_and_data  # noqa: E402
from medshield.attacks import APGD, AutoAttack  # noqa: E402
from medshield.models import predict_labels  # noqa: E402
from tests.test_autoattack_crosscheck import Padded  # noqa: E402

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def main() -> None:
    import pyautoattack  # test-only dependency: pip install --no-deps pyautoattack

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", default="1/255,2/255")
    p.add_argument("--targets", type=int, default=9, help="reference APGD-T/FAB-T target classes (9 = standard)")
    p.add_argument("--attacks", default="apgd-ce,apgd-t,fab-t,square",
                   help="members run by both (the reference's names); fewer than all four = its 'custom' version")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    model, ds, _ = load_run_and_data(a.run, None, a.data_dir, "cpu")
    model.eval()
    part = ds.split("test")
    x, y = part.get(torch.randperm(len(part), generator=torch.Generator().manual_seed(a.seed))[: a.n].sort().values)
    for eps in [float(Fraction(e)) for e in a.eps.split(",")]:
        t0 = time.perf_counter()
        names = a.attacks.split(",")
        custom = {} if len(names) == 4 else {"version": "custom", "attacks": names}
        ref = pyautoattack.AutoAttack(Padded(model).eval(), norm="Linf", eps=eps, seed=a.seed, device="cpu",
                                      **({"version": "standard"} | custom))
        ref.apgd_targeted.n_target_classes = ref.fab.n_target_classes = a.targets
        ref_adv, _ = ref.run_standard_evaluation(x, y, batch_size=x.shape[0])
        t1 = time.perf_counter()
        gen = torch.Generator().manual_seed(a.seed)
        apgd = APGD(steps=100).attack(model, x, y, eps=eps, generator=gen)
        aa = AutoAttack(members=[n.replace("-", "_") for n in names]).attack(model, x, y, eps=eps, generator=gen)
        with torch.no_grad():
            row = {"eps": eps, "n": len(y), "clean": float((predict_labels(model(x)) == y).float().mean()),
                   "reference_autoattack": float((predict_labels(model(ref_adv)) == y).float().mean()),
                   "medshield_apgd_ce": 1 - apgd.success_rate, "medshield_autoattack": 1 - aa.success_rate,
                   "members": names, "reference_targets": a.targets, "reference_seconds": round(t1 - t0, 1),
                   "medshield_seconds": round(time.perf_counter() - t1, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
