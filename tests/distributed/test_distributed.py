"""activedet.distributed: sharding rules, one-process no-ops, and 2-process (gloo, CPU)
scoring that gives the same per-image scores and the same selection as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activedet import distributed
from activedet.errors import DistributedError, StrategyError
from activedet.models.factory import build_adapter
from activedet.strategies.registry import build_strategy
from tests.conftest import make_detection_dataset, tiny_config
from tests.distributed.score_worker import score_strategies

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("score_worker.py")


def torchrun_env() -> dict[str, str]:
    """The environment for a torchrun child: this checkout's sources first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


TORCHRUN_TIMEOUT_S = 300  # a launch here takes 10-60 s; a hung rank fails the test, never the suite


def torchrun(nproc: int, *args: str, timeout: float = TORCHRUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={distributed.free_port()}", *args]
    try:
        return subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # subprocess.run killed torchrun; say what the ranks said last
        raise AssertionError(f"torchrun ran past {timeout:.0f} s\n{ranks_tail(e.stdout, e.stderr)}") from None


def ranks_tail(stdout: str | bytes | None, stderr: str | bytes | None, lines: int = 40) -> str:
    """The last lines of a torchrun launch's output (both ranks' lines are in it, prefixed)."""
    def text(x: str | bytes | None) -> str:
        return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

    out = [line for line in (text(stdout) + "\n" + text(stderr)).splitlines() if line.strip()]
    return "\n".join(out[-lines:])


def run_worker(tmp_path: Path, nproc: int, spec: dict, out: str = "out.json") -> dict:
    """Run ``score_worker.py`` on ``spec`` in ``nproc`` processes; its result (JSON, or a
    torch file for ``out`` ending in ``.pt``), checked to come from ``nproc`` processes,
    without the ``_world`` entry. Every rank ended with no thread of the process group left
    running (what lets it exit without the abort of issue 37)."""
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = torchrun(nproc, str(WORKER), str(tmp_path / "spec.json"), str(tmp_path / out))
    assert proc.returncode == 0, f"torchrun exit code {proc.returncode}\n{ranks_tail(proc.stdout, proc.stderr)}"
    path = tmp_path / out
    result = torch.load(path, weights_only=True) if out.endswith(".pt") else json.loads(path.read_text())
    assert result.pop("_world") == nproc
    for r in range(nproc):
        threads = json.loads(Path(f"{path}.threads.{r}").read_text())
        assert threads["after_shutdown"] == threads["before_init"], (r, threads)
    return result


# --------------------------------------------------------------------- sharding rules
@pytest.mark.parametrize("n,block,w", [(12, 1, 2), (11, 3, 2), (8, 3, 3), (2, 4, 3), (0, 2, 2), (7, 2, 5)])
def test_contiguous_shards_cover_ids_in_order(n: int, block: int, w: int) -> None:
    ids = list(range(100, 100 + n))
    parts = [distributed.shard(ids, block, of=(r, w)) for r in range(w)]
    assert sum(parts, []) == ids
    for p in parts:  # whole blocks, except the pool's last one: a rank's batches are the one-process batches
        assert all((ids.index(i) % block == 0) for i in p[::block])
    sizes = [-(-len(p) // block) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_strided_shards_and_one_process() -> None:
    ids = [5, 6, 7, 8, 9]
    assert distributed.shard(ids, strided=True, of=(1, 2)) == [6, 8]
    assert sorted(sum((distributed.shard(ids, strided=True, of=(r, 3)) for r in range(3)), [])) == ids
    assert distributed.shard(ids) == ids  # one process: everything
    with pytest.raises(ValueError, match="block"):
        distributed.shard(ids, 0, of=(0, 2))


def test_helpers_are_no_ops_in_one_process() -> None:
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    assert not distributed.active()
    assert distributed.init("cpu") is None  # WORLD_SIZE unset: nothing to join
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_scores({3: 1.0, 1: 2.0}, order=[1, 2, 3]) == {1: 2.0, 3: 1.0}
    assert distributed.score_sharded(lambda ids: {i: float(i) for i in ids}, [4, 2]) == {4: 4.0, 2: 2.0}
    rows = distributed.gather_rows(lambda ids: np.asarray(ids, float)[:, None], [1, 2, 3])
    assert rows.shape == (3, 1)
    assert distributed.on_main(lambda: 7) == 7
    with pytest.raises(StrategyError, match="boom"):
        distributed.on_main(lambda: (_ for _ in ()).throw(StrategyError("boom")))
    t = torch.ones(2)
    assert distributed.all_reduce_sum([t])[0] is t
    assert distributed.epoch_part([3, 1, 2]) == [3, 1, 2]
    assert distributed.reduce_sums({"a": 1.0}, 4) == ({"a": 1.0}, 4)


def test_init_without_rendezvous_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        distributed.init("cpu")


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(DistributedError, match=f"port {port} on 127.0.0.1 is in use"):
            distributed.check_port(port)
    distributed.check_port(distributed.free_port())


# --------------------------------------------------------------------- 2 processes = 1 process
def _checkpoint(path: Path, strategy_name: str, params: dict) -> str:
    """A briefly trained tiny RetinaNet (the strategy's variant), saved like the loop does."""
    data = make_detection_dataset(n=12, seed=5)
    strategy = build_strategy(strategy_name, params)
    ad = build_adapter(tiny_config(), data.num_classes, strategy)
    ad.reset(11)
    if strategy.model_variant == "plain":  # a few steps, so that scores spread out
        opt = torch.optim.SGD(ad.model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(3):
            x, y = ad.load_batch(data, data.ids[:4], False)
            loss = sum(ad.train_loss(x, y).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save({"round": 0, "model": ad.state_dict()}, path)
    return str(path)


def test_two_process_scoring_matches_one_process(tmp_path: Path) -> None:
    plain = _checkpoint(tmp_path / "plain.pt", "entropy", {})
    mial = _checkpoint(tmp_path / "mial.pt", "mial", {})
    spec = {"n": 12, "data_seed": 5, "seed": 9, "budget": 3, "labeled": [1, 2, 3, 4],
            "strategies": [
                {"name": "random", "checkpoint": plain},
                {"name": "entropy", "params": {"batch_size": 3, "min_score": 0.0}, "checkpoint": plain},
                {"name": "coreset", "params": {"batch_size": 3}, "checkpoint": plain},
                {"name": "mial", "params": {"batch_size": 3, "top_k": 50}, "checkpoint": mial},
                {"name": "cdal", "params": {"batch_size": 3, "min_score": 0.0}, "checkpoint": plain},
                {"name": "isal", "params": {"batch_size": 3, "reference": "labeled", "depth": 3, "repeats": 1,
                                            "pseudo_score_threshold": 0.0, "max_pseudo_boxes": 5},
                 "checkpoint": plain},
            ]}
    two = run_worker(tmp_path, 2, spec)
    one = score_strategies(spec)
    for name in ("random", "entropy", "coreset", "cdal", "mial", "isal"):
        assert two[name]["selected"] == one[name]["selected"], name
        assert two[name]["scores"].keys() == one[name]["scores"].keys(), name
        a = np.array([one[name]["scores"][k] for k in one[name]["scores"]])
        b = np.array([two[name]["scores"][k] for k in one[name]["scores"]])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    # the checks are not vacuous: every scoring strategy scored the 8 unlabeled images (core-set: its picks)
    assert all(len(one[n]["scores"]) == 8 for n in ("entropy", "mial", "isal"))
    assert len(one["coreset"]["scores"]) == 3 and len(one["cdal"]["scores"]) == 3 and one["random"]["scores"] == {}
    assert len(set(one["isal"]["scores"].values())) > 1


def test_two_process_ddp_training_keeps_ranks_in_step(tmp_path: Path) -> None:
    """The plain schedule under DDP: each rank trains on half of every epoch (7 images: 4
    each, padded), and both end with the same weights and the same (averaged) loss history."""
    spec = {"n": 12, "data_seed": 5, "train_images": 7}
    out = run_worker(tmp_path, 2, spec)
    assert out["changed"]
    assert out["alone"] == [False, [1, 2, 3]] and out["outside"] == [True, [1, 2]]
    a, b = out["digests"]
    assert a == pytest.approx(b, rel=1e-9, abs=0.0)
    assert out["images"] == [8, 8]  # 2 epochs x 4 of the 7 (padded to 8) images per rank
    assert [row["epoch"] for row in out["history"]] == [1, 2]
    assert all(np.isfinite(v) for row in out["history"] for k, v in row.items() if k not in ("stage", "epoch"))


def test_simulate_nproc_refuses_a_busy_port_and_a_bad_count(tmp_path: Path, capsys) -> None:
    import socket

    from activedet.cli import main
    from tests.loop.test_runner import write_config

    cfg = write_config(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--nproc", "2",
                     "--master-port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"port {port} on 127.0.0.1 is in use" in err[0]
        assert main(["select", str(cfg), "--project", str(tmp_path / "project"), "--budget", "2", "--nproc", "2",
                     "--master-port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("activedet select: error: port") and "in use" in err[0]
    assert main(["select", str(cfg), "--project", str(tmp_path / "project"), "--budget", "2", "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "project").exists()
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_two_process_mial_gradients_equal_one_process_gradients(tmp_path: Path) -> None:
    """The same global batch (4 labeled, 4 unlabeled images; 2 per rank): every stage's
    gradients under DDP equal one process's, term by term. Mean-over-images terms (the
    labeled detection + MIL loss, the min stage's MIL loss) match exactly; the discrepancy
    terms are sums over the batch's images (the authors' form), so DDP's average over ranks
    gives 1/2 of the one-process sum: the scale a per-process batch of 2 has in one process."""
    spec = {"mode": "grads", "n": 12, "data_seed": 5, "labeled": [1, 2, 3, 4], "unlabeled": [5, 6, 7, 9]}
    two = run_worker(tmp_path, 2, spec, "out.pt")
    from tests.distributed.score_worker import grad_check

    one = grad_check(spec)
    scale = {"label/labeled": 1.0, "max/discrepancy": 0.5, "min/discrepancy": 0.5, "min/mil": 1.0}
    assert sorted(two) == sorted(one) == sorted(scale)
    for key, factor in scale.items():
        assert two[key].keys() == one[key].keys(), key  # the same parameters got gradients (stage freezing)
        a = torch.cat([one[key][n].flatten() for n in one[key]]).numpy()
        b = torch.cat([two[key][n].flatten() for n in one[key]]).numpy()
        assert np.abs(a).max() > 1e-6, key  # not vacuous
        np.testing.assert_allclose(b, factor * a, rtol=1e-4, atol=1e-6 * np.abs(a).max(), err_msg=key)
    # stage freezing is seen through the wrapper: the max stage leaves the backbone alone,
    # the min stage f1/f2 (the head's second classifier)
    assert not any(n.startswith("backbone.") for n in one["max/discrepancy"])
    assert any(n.startswith("backbone.") for n in one["min/discrepancy"])


def test_two_process_gradient_averaging_by_hand(tmp_path: Path) -> None:
    """DDP's find_unused_parameters rule, by hand: a gradient on one rank of two is halved on
    both, none anywhere stays None, every rank's is the mean; through synced's backward
    hook, w1 gets (1 + 2) / 2 per element and w2, used on rank 1 only, 3 / 2."""
    out = run_worker(tmp_path, 2, {"mode": "average"})
    expected = [[0.5, 1.0], None, [15.0], [1.5, 1.5], [1.5, 1.5]]
    assert out["grads"] == [expected, expected]


def test_two_process_mial_and_learning_loss_training_keep_ranks_in_step(tmp_path: Path) -> None:
    """The MIAL cycle (stages freezing parameter groups, a DDP wrapper per stage), MIAL with a
    separate scorer (the default), the learning-loss trainer, and a classifier's plain and
    MIAL-IUL schedules under DDP: both ranks end with the same weights (batch-norm statistics
    included) and history."""
    spec = {"mode": "trainers", "n": 12, "data_seed": 5}
    out = run_worker(tmp_path, 2, spec)
    for name in ("mial", "mial_separate", "learning_loss", "cls_plain", "cls_mial_iul"):
        a, b = out[name]["digests"]
        assert a == pytest.approx(b, rel=1e-12, abs=0.0), name
        h0, h1 = out[name]["histories"]
        assert h0 == h1, name
        assert out[name]["changed"], name
    for name in ("mial", "learning_loss"):
        assert any(k.startswith("backbone.") for k in out[name]["changed"]), name
    assert [row["stage"] for row in out["mial"]["histories"][0]] == ["label", "max", "min", "label"]
    assert [(row["stage"], row.get("model")) for row in out["mial_separate"]["histories"][0]][-3:] == [
        ("max", "scorer"), ("min", "scorer"), ("label", "scorer")]
    assert any(k.startswith("scorer.backbone.") for k in out["mial_separate"]["changed"])
    assert any(k.startswith("loss_module.") for k in out["learning_loss"]["changed"])


def test_two_process_k_center_matches_one_process(tmp_path: Path) -> None:
    """Distributed k-center greedy (each rank holds its shard of the candidates' features,
    one all-gather per pick) gives the one-process picks and gains: with and without
    existing centers, with tied (duplicated) rows, and with a rank left without candidates."""
    from activedet.strategies.diversity import k_center_greedy

    cases = [{"seed": 1, "centers": 6, "candidates": 23, "budget": 7, "block": 3},
             {"seed": 2, "centers": 0, "candidates": 17, "budget": 5, "block": 2},
             {"seed": 3, "centers": 4, "candidates": 20, "budget": 12, "block": 4, "duplicates": 8},
             {"seed": 4, "centers": 3, "candidates": 3, "budget": 2, "block": 4}]
    spec = {"mode": "kcenter", "cases": cases}
    two = run_worker(tmp_path, 2, spec)
    assert len(two["cases"]) == len(cases)
    for case, got in zip(cases, two["cases"]):
        n_c, n, dup = case["centers"], case["candidates"], case.get("duplicates", 0)
        feats = np.random.default_rng(case["seed"]).normal(size=(n_c + n, 5))
        if dup:
            feats[n_c + n - dup:] = feats[n_c:n_c + dup]
        picks, gains = k_center_greedy(feats, np.arange(n_c + n) < n_c, case["budget"],
                                       np.random.default_rng(3), 4)
        assert got["picks"] == [p - n_c for p in picks], case
        np.testing.assert_allclose(got["gains"], gains, rtol=1e-12)
        assert sum(got["rows"]) == n  # every candidate's features computed once, on one rank
    assert two["cases"][3]["rows"] == [3, 0]  # one block of 4: rank 1 holds no candidate
    assert len(set(two["cases"][2]["picks"])) == cases[2]["budget"]


def test_more_processes_than_score_blocks_give_the_one_process_answer(tmp_path: Path) -> None:
    """3 processes, 8 unlabeled images in blocks of 4: the third rank has nothing to score
    (and no reference images for ISAL, no core-set candidates); the selections and scores
    are still those of one process."""
    plain = _checkpoint(tmp_path / "plain.pt", "entropy", {})
    spec = {"n": 12, "data_seed": 5, "seed": 9, "budget": 3, "labeled": [1, 2, 3, 4],
            "strategies": [
                {"name": "entropy", "params": {"batch_size": 4, "min_score": 0.0}, "checkpoint": plain},
                {"name": "coreset", "params": {"batch_size": 4}, "checkpoint": plain},
                {"name": "isal", "params": {"batch_size": 4, "reference": "labeled", "depth": 3, "repeats": 1,
                                            "pseudo_score_threshold": 0.0, "max_pseudo_boxes": 5},
                 "checkpoint": plain},
            ]}
    three = run_worker(tmp_path, 3, spec)
    assert distributed.shard(list(range(8)), 4, of=(2, 3)) == []  # the premise: rank 2 gets no block
    one = score_strategies(spec)
    for name in ("entropy", "coreset", "isal"):
        assert three[name]["selected"] == one[name]["selected"], name
        assert three[name]["scores"].keys() == one[name]["scores"].keys(), name
        a = np.array([one[name]["scores"][k] for k in one[name]["scores"]])
        b = np.array([three[name]["scores"][k] for k in one[name]["scores"]])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    assert len(one["entropy"]["scores"]) == 8 and len(one["isal"]["scores"]) == 8
