"""``train.average_last``: the round's weights are the plain mean of the weights after each
step of the last fraction of training."""

import torch

from activedet.training.trainer import WeightAverage


def test_average_of_the_last_steps_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.zeros(()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = WeightAverage(model, 0.5, total=6)  # steps 4, 5, 6 are averaged
    seen = []
    for it in range(1, 7):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        model.count += 1
        avg.step(it)
        if it > 3:
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
    avg.finish()
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), torch.stack([s[k].float() for s in seen]).mean(0), atol=1e-6), k


def test_off_leaves_the_last_weights():
    model = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    avg = WeightAverage(model, 0.0, total=5)
    for it in range(1, 6):
        avg.step(it)
    avg.finish()
    assert avg.averaged is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
