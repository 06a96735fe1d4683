"""Remote targets over the Open Inference Protocol: a REAL MLServer (its own venv) on loopback.

A small classifier is trained outside MedShield (a plain PyTorch loop on PneumoniaMNIST), exported as
TorchScript and served by MLServer with a runtime that counts every image it answers. HSJA (same seed)
must find identical per-image L2 distances in process and through the server, and the server's own
count must equal MedShield's query count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from medshield import api
from medshield.attacks.decision.hsja import HopSkipJump
from medshield.attacks.decision.oracle import LabelOracle, model_label_fn
from medshield.data import load_dataset
from medshield.targets.oip import OIPModel
from oip_helpers import mlserver_torchscript

BATCH = 256


def _plain_training(shared_data: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained by a plain loop (not MedShield's), 1 epoch on 1,500 training images."""
    ds = load_dataset("pneumoniamnist", shared_data)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = ds.train.get(torch.randperm(len(ds.train), generator=gen)[:1500])
    for i in range(0, 1500, 50):
        opt.zero_grad()
        nn.functional.cross_entropy(net((x[i:i + 50] - 0.5) / 0.5), y[i:i + 50]).backward()
        opt.step()
    model = nn.Sequential(_Normalise(), net).eval()
    xt, yt = ds.test.get(torch.arange(0, 200))
    return model, xt, yt


class _Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5


def _hsja(label_fn, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> LabelOracle:  # noqa: ANN001
    oracle = LabelOracle(label_fn, x, y, budgets)
    HopSkipJump(init_evals=50).run(oracle, torch.Generator().manual_seed(7))
    return oracle


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("oip")
    model, xt, yt = _plain_training(shared_data)
    torch.jit.trace(model, xt[:2]).save(str(tmp / "model.pt"))
    with mlserver_torchscript(tmp / "model.pt", tmp) as server:
        yield server, model, xt, yt, tmp / "model.pt"


def test_oip_card_metadata_outputs_and_errors(served, tmp_path: Path, shared_data: Path) -> None:  # noqa: ANN001
    server, model, xt, _, model_file = served
    server.reset_counts()
    remote = OIPModel(server.url, server.model, output="logits", batch_size=64)
    assert remote.ready() and remote.metadata()["name"] == server.model
    with torch.no_grad():
        local = model(xt)
    torch.testing.assert_close(remote.scores(xt), local, rtol=0, atol=1e-6)
    assert (remote.queries, remote.requests) == (200, 4) == (server.images_answered(), server.infer_requests())
    with pytest.raises(Exception, match="HTTP 404: .*not found"):
        OIPModel(server.url, "no-such-model").labels(xt[:1])
    with pytest.raises(Exception, match="no output named 'probs'"):
        OIPModel(server.url, server.model, output="probs").labels(xt[:1])
    # the same model as a card: `medshield target check` through the server = the TorchScript file in process
    output = {"kind": "logits", "task": "binary", "classes": ["normal", "pneumonia"], "outputs": 2}
    cards = {"oip": {"format": "oip", "url": server.url, "name": server.model, "output_name": "logits", "batch_size": 256},
             "torchscript": {"format": "torchscript", "path": str(model_file)}}
    checks = {}
    for name, spec in cards.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"model": spec, "input": {"size": 28, "channels": 1},
                                                               "output": output}))
        checks[name] = api.target_check(tmp_path / f"{name}.yaml", dataset="pneumoniamnist", data_dir=shared_data)
    assert checks["oip"]["test"]["accuracy"] == checks["torchscript"]["test"]["accuracy"] > 0.7
    assert checks["oip"]["test"]["auc"] == pytest.approx(checks["torchscript"]["test"]["auc"], abs=1e-6)
    assert not checks["oip"]["target"]["gradients"] and checks["oip"]["target"]["remote"]


def test_hsja_identical_in_process_and_through_mlserver(served) -> None:  # noqa: ANN001
    server, model, xt, yt, _ = served
    label_fn = model_label_fn(model, batch_size=BATCH)
    keep = torch.nonzero(label_fn(xt) == yt).squeeze(1)[:3]
    x, y, budgets = xt[keep], yt[keep], [100, 250]
    local = _hsja(label_fn, x, y, budgets)
    server.reset_counts()
    before = server.infer_requests()
    with OIPModel(server.url, server.model, output="logits", batch_size=BATCH) as remote:
        through = _hsja(remote.labels, x, y, budgets)
        sent, answered, requests = remote.transport.rows_sent, remote.queries, remote.requests
    for b in budgets:
        l2_local, l2_remote = local.best(b)[1], through.best(b)[1]
        assert torch.equal(l2_local, l2_remote), (b, l2_local, l2_remote)
    assert torch.isfinite(l2_local).sum() >= 2  # the attack found adversarials, so the comparison means something
    assert torch.equal(local.queries, through.queries)
    n_queries = int(through.queries.sum())
    assert n_queries == answered == sent == server.images_answered()
    assert server.infer_requests() - before == requests
    print(f"\nOIP/MLServer: per-image L2 at {budgets[-1]} = {np.round(l2_remote.numpy(), 4).tolist()} (identical); "
          f"MedShield queries {n_queries} = server images {server.images_answered()}; {requests} requests")
