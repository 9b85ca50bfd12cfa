"""The NSoftmax and SNCA objectives (``loss.objective``): brute-force losses, the proxy and memory bookkeeping,
the gradient scaling under torchrun, checkpoint state, configuration; a trainer run that resumes exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitrieval.config import Config, LossConfig, MemoryConfig, apply_overrides
from vitrieval.presets import load_preset
from vitrieval.training.objectives import IRTObjective, NSoftmaxObjective, SNCAObjective, make_objective

TRAIN_LABELS = np.array([7, 7, 3, 3, 11, 11, 3, 7])  # non-contiguous class ids, as a real table has


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_nsoftmax_is_the_cross_entropy_over_normalised_proxies_of_the_sorted_classes():
    obj = NSoftmaxObjective(LossConfig(objective="nsoftmax", koleo_weight=0.3), TRAIN_LABELS, 6, seed=4)
    assert obj.proxies.shape == (3, 6) and obj.classes.tolist() == [3, 7, 11]
    bound = 1 / math.sqrt(6)
    assert float(obj.proxies.detach().abs().max()) <= bound  # nn.Linear's uniform(-1/sqrt(D), 1/sqrt(D))
    again = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 6, seed=4)
    assert torch.equal(obj.proxies, again.proxies)  # seeded: every rank and rerun starts from the same proxies
    z, labels = _unit(5, 6, 0).requires_grad_(), torch.tensor([11, 3, 7, 7, 3])
    terms = obj(z, labels, 0)
    w = F.normalize(obj.proxies.detach(), dim=1)
    brute = 0.0
    for i in range(5):
        logits = [float(z[i] @ w[c]) / 0.05 for c in range(3)]
        row = {3: 0, 7: 1, 11: 2}[int(labels[i])]
        brute += -(logits[row] - math.log(sum(math.exp(v) for v in logits)))
    assert float(terms["nsoftmax"]) == pytest.approx(brute / 5, rel=1e-5)
    assert float(terms.total) == pytest.approx(float(terms["nsoftmax"]) + 0.3 * float(terms["koleo"]), rel=1e-6)
    assert list(obj.report(terms)) == ["loss", "loss_nsoftmax", "loss_koleo"]
    terms.total.backward()
    assert obj.proxies.grad is not None and torch.isfinite(obj.proxies.grad).all() and torch.isfinite(z.grad).all()
    assert obj.parameters() == [obj.proxies] and obj.lr_multiplier == 1.0


def test_nsoftmax_refuses_a_label_that_is_not_a_training_class():
    obj = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 4)
    with pytest.raises(ValueError, match="label 5 is not a training class"):
        obj(_unit(2, 4, 0), torch.tensor([3, 5]), 0)


def test_under_two_ranks_the_proxy_gradient_is_the_one_process_gradient():
    """backward_loss scales the global-batch term by the world size (DDP averages the encoder's gradients); the
    proxies, outside DDP, get that factor undone in the graph, so each rank holds the one-process gradient."""
    z = _unit(8, 5, 1)
    labels = torch.as_tensor(TRAIN_LABELS)
    grads = []
    for world in (1, 2):
        obj = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 5, seed=0, world_size=world)
        obj.backward_loss(obj(z, labels, 0), world).backward()
        grads.append(obj.proxies.grad)
    assert torch.allclose(grads[1], grads[0], atol=1e-7, rtol=1e-6)


def _brute_snca(z, labels, memory, mem_labels, self_index, tau=0.05):
    total = 0.0
    for i in range(len(z)):
        sims = {j: math.exp(float(z[i] @ memory[j]) / tau) for j in range(len(memory)) if j != int(self_index[i])}
        pos = sum(v for j, v in sims.items() if mem_labels[j] == labels[i])
        total += -math.log(pos / sum(sims.values()))
    return total / len(z)


def test_snca_reads_the_memory_before_the_step_then_updates_the_batch_rows_with_momentum():
    obj = SNCAObjective(LossConfig(objective="snca"), TRAIN_LABELS, 4, seed=2)
    assert obj.memory.shape == (8, 4) and float(obj.memory.abs().max()) <= 0.5  # uniform(-1/sqrt(D), 1/sqrt(D))
    before = obj.memory.clone()
    rows = torch.tensor([2, 5, 0, 2])  # row 2 twice (a class with fewer images than K): updated from its first copy
    z = _unit(4, 4, 3).requires_grad_()
    labels = torch.as_tensor(TRAIN_LABELS)[rows]
    terms = obj(z, labels, 0, indices=rows)
    assert float(terms["snca"]) == pytest.approx(_brute_snca(z.detach(), labels, before, TRAIN_LABELS, rows),
                                                 rel=1e-5)
    terms.total.backward()  # the update is out of place: the graph's memory is intact
    assert torch.isfinite(z.grad).all()
    expect = before.clone()
    for r, i in ((2, 0), (5, 1), (0, 2)):
        expect[r] = F.normalize(0.5 * before[r] + 0.5 * z.detach()[i], dim=0)
    assert torch.allclose(obj.memory, expect, atol=1e-7)
    untouched = [1, 3, 4, 6, 7]
    assert torch.equal(obj.memory[untouched], before[untouched])
    with pytest.raises(ValueError, match="needs the training-table rows"):
        obj(z, labels, 0)


def test_snca_momentum_and_temperature_come_from_the_config():
    obj = SNCAObjective(LossConfig(objective="snca", snca_momentum=0.9, temperature=0.1), TRAIN_LABELS, 4)
    before = obj.memory.clone()
    rows, z = torch.tensor([1, 6]), _unit(2, 4, 5)
    labels = torch.as_tensor(TRAIN_LABELS)[rows]
    loss = obj(z, labels, 0, indices=rows)["snca"]
    assert float(loss) == pytest.approx(_brute_snca(z, labels, before, TRAIN_LABELS, rows, tau=0.1), rel=1e-5)
    assert torch.allclose(obj.memory[1], F.normalize(0.9 * before[1] + 0.1 * z[0], dim=0), atol=1e-7)


def test_objective_state_round_trips_and_a_checkpoint_of_another_objective_is_named():
    nsm = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 4, seed=1)
    other = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 4, seed=2)
    param = other.proxies
    other.load_state_dict(nsm.state_dict())
    assert other.proxies is param and torch.equal(other.proxies, nsm.proxies)  # in place: the optimizer keeps it
    snca = SNCAObjective(LossConfig(objective="snca"), TRAIN_LABELS, 4, seed=1)
    snca(_unit(2, 4, 0), torch.tensor([7, 7]), 0, indices=torch.tensor([0, 1]))
    fresh = SNCAObjective(LossConfig(objective="snca"), TRAIN_LABELS, 4, seed=9)
    fresh.load_state_dict(snca.state_dict())
    assert torch.equal(fresh.memory, snca.memory)
    with pytest.raises(ValueError, match="no snca_memory: it was not written by a loss.objective=snca run"):
        fresh.load_state_dict({"memory": None})
    with pytest.raises(ValueError, match=r"SNCA memory is \(8, 4\), this run's training set needs \(3, 4\)"):
        SNCAObjective(LossConfig(objective="snca"), [1, 2, 3], 4).load_state_dict(snca.state_dict())


def test_make_objective_and_the_configuration_checks():
    kinds = {name: type(make_objective(LossConfig(objective=name), MemoryConfig(), 4, TRAIN_LABELS))
             for name in ("contrastive", "nsoftmax", "snca")}
    assert kinds == {"contrastive": IRTObjective, "nsoftmax": NSoftmaxObjective, "snca": SNCAObjective}
    base = load_preset("cpu-tiny")
    with pytest.raises(ValueError, match="loss.objective: 'arcface' is not one of contrastive, nsoftmax, snca"):
        apply_overrides(base, ["loss.objective=arcface"])
    with pytest.raises(ValueError, match="cross-batch memory feeds the contrastive objective only"):
        apply_overrides(base, ["loss.objective=snca", "memory.size=64"])
    with pytest.raises(ValueError, match="loss.temperature must be > 0"):
        apply_overrides(base, ["loss.objective=nsoftmax", "loss.temperature=0"])
    with pytest.raises(ValueError, match=r"loss.snca_momentum must be in \[0, 1\)"):
        apply_overrides(base, ["loss.objective=snca", "loss.snca_momentum=1"])
    with pytest.raises(ValueError, match="nsoftmax trains on P x K batches"):
        apply_overrides(load_preset("sfm120k-cpu-tiny"), ["loss.objective=nsoftmax"])
    assert Config().loss.objective == "contrastive"


TINY = ["model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off",
        "train.batch_size=16", "train.eval_every=0", "train.log_every=1", "memory.size=0", "train.lr=1e-3"]


@pytest.mark.parametrize("objective", ["nsoftmax", "snca"])
def test_a_run_trains_and_resumes_to_identical_weights_proxies_and_memory(objective, products_32, tmp_path):
    from vitrieval.training import train

    def cfg(iterations: int, every: int):
        return apply_overrides(load_preset("cpu-tiny"), [
            f"data.root={products_32}", *TINY, f"loss.objective={objective}", "loss.koleo_weight=0.5",
            f"train.iterations={iterations}", f"train.checkpoint_every={every}"])

    straight = train(cfg(4, 100), tmp_path / "straight", progress=False)
    train(cfg(2, 100), tmp_path / "resumed", progress=False)
    resumed = train(cfg(4, 100), tmp_path / "resumed", resume=True, progress=False)
    assert straight.iterations == resumed.iterations == 4
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    key = {"nsoftmax": "nsoftmax_proxies", "snca": "snca_memory"}[objective]
    assert torch.equal(a[key], b[key])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    rows = [r for r in straight.history if "loss" in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r[f"loss_{objective}"]) and r["loss_koleo"] > 0 for r in rows)
    if objective == "nsoftmax":
        groups = a["optimizer"]["param_groups"]
        # backbone without and with weight decay, then the proxies' group (multiplier 1)
        assert len(groups) == 3 and groups[-1]["lr"] == pytest.approx(1e-3)
        assert a[key].shape == (8, 64)  # products_32: 8 training identities, 64-d descriptors
    else:
        assert a[key].shape == (40, 64)  # every training image (8 identities x 5 views)
        assert torch.allclose(a[key].norm(dim=1)[a[key].norm(dim=1) > 0.9], torch.ones(1), atol=1e-5)


def test_proxy_warmup_steps_move_the_proxies_and_head_but_not_the_backbone(products_32, tmp_path):
    """loss.proxy_warmup_iterations=2: steps 0 and 1 leave every backbone parameter bit-identical (no update, no
    weight decay) while the proxies and the projection move; step 2 trains the backbone too."""
    from vitrieval.training.pk_trainer import Trainer

    cfg = apply_overrides(load_preset("cpu-tiny"), [
        f"data.root={products_32}", *TINY, "loss.objective=nsoftmax", "model.projection_dim=16",
        "loss.proxy_warmup_iterations=2", "train.iterations=3", "train.weight_decay=0.05"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    try:
        batches = trainer._batches()

        def snapshot() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
            enc = trainer.encoder
            return ({k: v.detach().clone() for k, v in enc.backbone.named_parameters()},
                    enc.projection.weight.detach().clone(), trainer.objective.proxies.detach().clone())

        backbone0, head0, proxies0 = snapshot()
        for step in range(2):
            trainer.step(next(batches))
            trainer.iteration += 1
            backbone, head, proxies = snapshot()
            assert all(torch.equal(backbone0[k], v) for k, v in backbone.items()), f"backbone moved at step {step}"
            assert not torch.equal(head, head0) and not torch.equal(proxies, proxies0)
        assert trainer.objective.warming_up()
        trainer.step(next(batches))
        assert not trainer.objective.warming_up()
        backbone, _, _ = snapshot()
        moved = [k for k, v in backbone.items() if not torch.equal(backbone0[k], v)]
        assert len(moved) == len(backbone)  # after the warm-up every backbone tensor trains
        batches.close()
    finally:
        trainer.metrics.close()
        trainer.run_dir.close()


def test_proxy_warmup_is_a_non_negative_count_and_off_by_default():
    assert LossConfig().proxy_warmup_iterations == 0
    with pytest.raises(ValueError, match="loss.proxy_warmup_iterations must be >= 0"):
        apply_overrides(load_preset("cpu-tiny"), ["loss.objective=nsoftmax", "loss.proxy_warmup_iterations=-1"])
    obj = NSoftmaxObjective(LossConfig(objective="nsoftmax"), TRAIN_LABELS, 4)
    optimizer = torch.optim.SGD([obj.proxies], lr=0.1)
    obj.attach(optimizer, torch.nn.Linear(2, 2))  # no warm-up: no hook registered
    assert not optimizer._optimizer_step_pre_hooks and not obj.warming_up()
