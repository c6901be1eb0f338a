"""``redo`` (``methods/redo.py``): every F steps, exactly the τ-dormant units are recycled.

Defining property: at a check, the units with s_i = E|h_i| / (mean_j E|h_j| + 1e-9) ≤ τ, and only
those, get fresh incoming weights (the network's init distribution, drawn from ``rng``), bias 0,
outgoing weights 0 and zeroed optimizer state; every other weight keeps its value except where it
is an incoming or outgoing weight of a recycled unit. Checked on an MLP against a restatement
that builds every expected matrix entry by entry, on the ConvNet (channels, the flattened conv3
owning four fc1 columns each) and on the ResNet (BatchNorm resets). h are the site outputs a
train-mode forward shows ReDo (``observe``; conv maps unpooled, as dopamine scores them), driven as
the engine drives them (``step``): each step's forward, then, after every F-th global step,
``on_period`` between steps, where the check and the recycling happen.
"""

from __future__ import annotations

import math

import pytest
import torch

from plastibench.method import RunContext, StepInfo
from plastibench.methods.redo import ReDo
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.units import incoming_init, incoming_shape
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1, 2])
ADAM = OptimizerSpec("adam", lr=1e-3)


def protocol(optimizer: OptimizerSpec = ADAM) -> Protocol:
    return Protocol(task="test", name="redo", version=1, n_tasks=1, steps_per_task=100, batch_size=5,
                    optimizer=optimizer, metric="mse", higher_is_better=False)


def redo_on(net, seeds=SEEDS, optimizer=ADAM, **hp) -> ReDo:
    """ReDo configured on ``net``, its optimizer stepped once on a random loss (non-zero moments)."""
    method = ReDo(ReDo.hparams_for("test", hp), RunContext(seeds=seeds, task="test", protocol=protocol(optimizer)))
    method.run.net = method.configure_network(net)
    method.run.optimizer = method.build_optimizer(list(net.parameters()), optimizer)
    return method


def train_once(method, x):
    """One optimizer step on a random loss; returns the site outputs its forward showed ReDo."""
    net, seen = method.run.net, []
    net.set_site_observer(lambda site, h: (seen.append(h.detach().clone()), method.observe(site, h)))
    try:
        out, _ = net(x)
    finally:
        net.set_site_observer(method.observe)
    out.square().mean(1).sum().backward()
    method.run.optimizer.step()
    return seen


def step(method, k: int, maps) -> None:
    """Global step ``k`` as the engine runs it: its forward shows ReDo every site's output (``maps``,
    in site order), then ``on_period`` (host int) when ``k`` closes a period of F steps."""
    for site, h in enumerate(maps):
        method.observe(site, h)
    if (k + 1) % method.event_period() == 0:
        method.on_period(StepInfo(k, 0, []))


def expected_mask(features, threshold, net):
    """The restated rule: dormant where E|h| / (mean E|h| + 1e-9) ≤ τ, in float64 (E over the batch
    and, for conv maps and the flattened conv3, over a channel's positions)."""
    masks = []
    for h, group in zip(features, net.unit_groups()):
        raw = h.double().abs().reshape(h.shape[0], h.shape[1], group.n_units, -1).mean((1, 3))
        masks.append(raw / (raw.mean(1, keepdim=True) + 1e-9) <= threshold)
    return masks


def moments(optimizer, p):
    state = optimizer.state[p]
    return state["exp_avg"], state["exp_avg_sq"]


def test_exactly_the_dormant_units_of_an_mlp_are_recycled():
    torch.manual_seed(0)
    net = BatchedMLP(MLPSpec((6, 8, 7, 3)), SEEDS)
    method = redo_on(net, threshold=0.5, period=1, score_on="batch")
    train_once(method, torch.randn(3, 5, 6))
    # synthetic features: each unit's |h| is constant over the batch, some units exactly silent
    features = [torch.rand(3, 1, n).mul(2).expand(3, 5, n).clone() for n in (8, 7)]
    features[0][0, :, 3] = 0.0
    features[1][1, :, :2] = 0.01
    dormant = expected_mask(features, 0.5, net)
    assert all(m.any() for m in dormant) and all((~m).any() for m in dormant)
    old = [p.detach().clone() for p in net.parameters()]
    old_m = [tuple(t.clone() for t in moments(method.run.optimizer, p)) for p in net.parameters()]
    step(method, 41, features)

    weights = [layer.weight for layer in net.layers]
    biases = [layer.bias for layer in net.layers]
    for l, layer in enumerate(net.layers):
        w_new, b_new = old[2 * l].clone(), old[2 * l + 1].clone()
        if l < 2:  # hidden layer l: its dormant rows redrawn, their bias 0
            group = net.unit_groups()[l]
            fresh = incoming_init(net, group).draw(SEEDS, 41, f"redo/layer{l}/init", (group.n_units, group.fan_in))
            rows = dormant[l]
            w_new[rows] = fresh[rows]
            b_new[rows] = 0.0
        if l > 0:  # dopamine's order: outgoing columns zeroed after every incoming row was drawn
            cols = dormant[l - 1]
            w_new = torch.where(cols.unsqueeze(1), torch.zeros_like(w_new), w_new)
        assert torch.equal(weights[l], w_new), f"layer {l} weight"
        assert torch.equal(biases[l], b_new), f"layer {l} bias"
        # optimizer state: zero exactly where the unit's weights were touched
        touched = torch.zeros_like(w_new, dtype=torch.bool)
        touched_b = torch.zeros_like(b_new, dtype=torch.bool)
        if l < 2:
            touched |= dormant[l].unsqueeze(2)
            touched_b |= dormant[l]
        if l > 0:
            touched |= dormant[l - 1].unsqueeze(1)
        for now, before in zip(moments(method.run.optimizer, weights[l]), old_m[2 * l]):
            assert torch.equal(now, torch.where(touched, torch.zeros_like(before), before))
        for now, before in zip(moments(method.run.optimizer, biases[l]), old_m[2 * l + 1]):
            assert torch.equal(now, torch.where(touched_b, torch.zeros_like(before), before))


def test_fresh_incoming_weights_follow_each_networks_init():
    mlp = BatchedMLP(MLPSpec((6, 8, 7, 3), "tanh"), SEEDS)
    rule = incoming_init(mlp, mlp.unit_groups()[1])
    assert (rule.kind, rule.scale) == ("uniform", pytest.approx(5 / 3 * math.sqrt(3 / 8)))
    conv = BatchedConvNet(SEEDS)
    for group in conv.unit_groups():  # torch's default for convs and linears alike
        rule = incoming_init(conv, group)
        assert (rule.kind, rule.scale) == ("uniform", pytest.approx(math.sqrt(1 / group.fan_in)))
    assert incoming_shape(conv.unit_groups()[1]) == (32, 3, 3)
    draws = incoming_init(conv, conv.unit_groups()[3]).draw(SEEDS, 7, "x", (128, 512))
    assert draws.abs().max() <= math.sqrt(1 / 512) and draws.abs().max() > 0.9 * math.sqrt(1 / 512)


def test_no_check_between_periods_and_the_window_averages_the_period():
    torch.manual_seed(1)
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    method = redo_on(net, threshold=0.5, period=3, score_on="window")
    ones = torch.ones(3, 5, 4)
    spike = ones.clone()
    spike[:, :, 0] = 3.0  # unit 0: 3 at the first step, silent at the other two -> window mean 1
    silent = ones.clone()
    silent[:, :, 0] = 0.0
    before = [p.detach().clone() for p in net.parameters()]
    assert method.event_period() == 3
    step(method, 0, [spike])
    step(method, 1, [silent])
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before))
    # the check after step 2: unit 0 scores (3 + 0 + 0) / 3 = 1 over the window, as every other unit
    step(method, 2, [silent])
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before))
    assert all(not total.any() for total in method.window)  # the next window starts empty
    # the next window holds steps 3..5 alone: unit 0 silent throughout is dormant at the check after 5
    for k in (3, 4, 5):
        step(method, k, [silent])
    assert torch.equal(net.layers[1].weight[:, :, 0], torch.zeros(3, 3))
    assert torch.equal(net.layers[1].weight[:, :, 1:], before[2][:, :, 1:])
    # "batch" would have scored the last step alone, where unit 0 is silent
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    before = [p.detach().clone() for p in net.parameters()]
    batch = redo_on(net, threshold=0.5, period=3, score_on="batch")
    for k, h in enumerate([spike, silent, silent]):
        step(batch, k, [h])
    assert torch.equal(net.layers[1].weight[:, :, 0], torch.zeros(3, 3))
    assert torch.equal(net.layers[1].weight[:, :, 1:], before[2][:, :, 1:])


def test_convnet_channels_and_the_flattened_conv3():
    net = BatchedConvNet(SEEDS)
    method = redo_on(net, threshold=0.2, period=1, score_on="batch")
    features = train_once(method, torch.randn(3, 4, 3, 32, 32))
    assert [tuple(h.shape[2:]) for h in features] == [(32, 28, 28), (64, 12, 12), (128, 4, 4), (128,), (128,)]
    features[2][0, :, [5, 9]] = 0.0  # conv3 channels 5 and 9 of seed 0 fall silent
    features[0][1, :, 7] = 0.0  # conv1 channel 7 of seed 1
    dormant = expected_mask(features, 0.2, net)
    assert dormant[2][0, 5] and dormant[2][0, 9] and dormant[0][1, 7]
    old = {name: p.detach().clone() for name, p in net.named_parameters()}
    step(method, 0, features)
    groups = net.unit_groups()
    everyone = torch.arange(128).expand(3, -1)
    for l, (group, cur) in enumerate(zip(groups, [net.conv1, net.conv2, net.conv3, net.fc1, net.fc2])):
        mask = dormant[l]
        assert torch.equal(cur.bias, torch.where(mask, 0.0, old[f"{group.name}.bias"])), group.name
        kept = old[f"{group.name}.weight"].clone()
        if l > 0:  # the previous layer's dormant units' slices of these rows are zeroed
            groups[l - 1].outgoing_weight.assign(everyone[:, :groups[l - 1].n_units], dormant[l - 1], 0.0, t=kept)
        w, kept = cur.weight.flatten(2), kept.flatten(2)
        assert torch.equal(w[~mask], kept[~mask]), group.name  # other units keep their incoming weights
        assert (w[mask] != kept[mask]).any(-1).all(), group.name  # dormant ones are redrawn
    # conv3 channel c owns fc1 columns 4c..4c+3: zeroed for the dormant ones only
    columns = net.fc1.weight.view(3, 128, 128, 4)
    assert torch.equal(columns[0][:, [5, 9]], torch.zeros(128, 2, 4))
    rows_kept = ~dormant[3][0]
    assert torch.equal(columns[0][rows_kept][:, 6], old["fc1.weight"].view(3, 128, 128, 4)[0][rows_kept][:, 6])
    assert torch.equal(net.conv2.weight[1, :, 7], torch.zeros(64, 3, 3))


def test_resnet_dormant_channel_gets_its_batchnorm_reset():
    seeds = torch.tensor([4])
    net = BatchedResNet18(seeds, num_classes=10)
    method = redo_on(net, seeds=seeds, threshold=0.1, period=1, score_on="batch")
    features = train_once(method, torch.randn(1, 2, 3, 8, 8))
    with torch.no_grad():
        block = net.layer1[0]
        block.bn1.weight.fill_(0.5)
        block.bn1.running_mean.fill_(0.3)
    features[1][:, :, 11] = 0.0  # layer1.0.conv1 channel 11
    dormant = expected_mask(features, 0.1, net)
    assert dormant[1][0, 11]
    step(method, 9, features)
    mask = dormant[1][0]
    assert torch.equal(block.bn1.weight[0], torch.where(mask, 1.0, 0.5))
    assert torch.equal(block.bn1.running_mean[0], torch.where(mask, 0.0, 0.3))
    assert torch.equal(block.conv2.weight[0][:, 11], torch.zeros(64, 3, 3))
    assert not method.run.optimizer.state[block.conv1.weight]["exp_avg"][0, 11].any()
    assert not method.run.optimizer.state[block.bn1.weight]["exp_avg"][0, 11].any()
    std = block.conv1.weight[0, 11].std()
    assert 0.7 < std / math.sqrt(2 / (64 * 9)) < 1.3  # Kaiming-normal, the ResNet's own init


def test_optimizer_state_kept_when_asked():
    net = BatchedMLP(MLPSpec((6, 8, 3)), SEEDS)
    method = redo_on(net, threshold=0.5, period=1, score_on="batch", reset_optimizer_state=False)
    train_once(method, torch.randn(3, 5, 6))
    before = moments(method.run.optimizer, net.layers[0].weight)[0].clone()
    step(method, 0, [torch.zeros(3, 5, 8)])  # every unit dormant
    assert torch.equal(moments(method.run.optimizer, net.layers[0].weight)[0], before)
    assert torch.equal(net.layers[1].weight, torch.zeros_like(net.layers[1].weight))


def test_seed_alone_equals_seed_beside_others():
    gen = torch.Generator().manual_seed(2)
    features = [torch.rand(3, 5, 8, generator=gen) * (torch.rand(3, 1, 8, generator=gen) > 0.3)]
    assert (features[0][2] == 0).all(0).any()  # seed 2 has silent units: something is recycled
    nets = {}
    for name, seeds in (("together", SEEDS), ("alone", SEEDS[2:])):
        nets[name] = BatchedMLP(MLPSpec((6, 8, 3)), seeds)
        before = nets[name].layers[1].weight.detach().clone()
        method = redo_on(nets[name], seeds=seeds, threshold=0.3, period=2)
        for k in range(4):
            step(method, k, [f[3 - seeds.numel():] for f in features])
        assert not torch.equal(nets[name].layers[1].weight, before)
    for a, b in zip(nets["together"].parameters(), nets["alone"].parameters()):
        assert torch.equal(a[2:], b)


def test_threshold_zero_recycles_exactly_the_silent_units():
    """s ≤ τ, not s < τ: with τ = 0 the units whose |h| is exactly 0 on every example are dormant."""
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    method = redo_on(net, threshold=0.0, period=1, score_on="batch")
    h = torch.rand(3, 5, 4) + 0.1
    h[0, :, 2] = 0.0
    h[1, :3, 1] = 0.0  # silent on 3 of 5 examples only: not dormant
    before = net.layers[1].weight.detach().clone()
    step(method, 0, [h])
    silent = torch.zeros(3, 4, dtype=torch.bool)
    silent[0, 2] = True
    expected = torch.where(silent.unsqueeze(1), torch.zeros_like(before), before)
    assert torch.equal(net.layers[1].weight, expected)


def test_default_scores_the_check_batch_alone_as_dopamine_and_window_on_one_example_streams():
    """Issue 11 item 13: dopamine scores one batch at each check; "window" stays only where B = 1."""
    assert ReDo.defaults["score_on"] == "batch"
    for task in ("icifar100", "cimagenet", "test"):
        assert ReDo.hparams_for(task)["score_on"] == "batch"
    for task in ("scr", "pmnist"):
        assert ReDo.hparams_for(task)["score_on"] == "window"
    # behaviour of the default: unit 0 fires hard at step 0, is silent at the checked step 1
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    before = [p.detach().clone() for p in net.parameters()]
    method = redo_on(net, threshold=0.5, period=2)
    spike, silent = torch.ones(3, 5, 4), torch.ones(3, 5, 4)
    spike[:, :, 0], silent[:, :, 0] = 3.0, 0.0  # window mean 1.5 (not dormant); the batch's 0 (dormant)
    step(method, 0, [spike])
    step(method, 1, [silent])
    assert torch.equal(net.layers[1].weight[:, :, 0], torch.zeros(3, 3))
    assert torch.equal(net.layers[1].weight[:, :, 1:], before[2][:, :, 1:])


def test_conv_units_are_scored_on_the_unpooled_maps_as_dopamine():
    """Issue 11 item 13: conv1 channel 0 fires (1) at one position of every 2x2 pooling window, the
    other 31 channels at 1 everywhere. Dopamine's score E|h| over the unpooled map gives channel 0
    0.25 / ((0.25 + 31) / 32) ≈ 0.26 ≤ τ = 0.5: dormant. After the 2x2 max-pool (the features the
    net returns, which CBP reads) every channel is 1 everywhere: none would be dormant."""
    seeds = torch.tensor([0])
    net = BatchedConvNet(seeds)
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.weight[0, 0, 0, 0, 0] = 1.0  # channel 0 copies input channel 0 (no offset)
        net.conv1.bias.fill_(1.0)
        net.conv1.bias[0, 0] = 0.0
    x = torch.zeros(1, 2, 3, 32, 32)
    x[:, :, 0, ::2, ::2] = 1.0  # 1 at the (even, even) positions only
    h1 = torch.relu(net.conv1(x)).detach()  # the unpooled conv1 map, restated
    raw = h1.abs().mean((1, 3, 4))
    assert (raw[0, 0], raw[0, 1:].min()) == (0.25, 1.0)
    assert raw[0, 0] / (raw.mean() + 1e-9) <= 0.5  # dopamine's rule: dormant

    method = redo_on(net, seeds=seeds, optimizer=OptimizerSpec("sgd", lr=1e-3), threshold=0.5, period=1,
                     score_on="batch")
    out, features = net(x)  # a training step as the engine runs it
    out.square().mean(1).sum().backward()
    method.run.optimizer.step()
    assert not expected_mask([features[0]], 0.5, net)[0][0, 0]  # pooled: not dormant
    stepped = {name: p.detach().clone() for name, p in net.named_parameters()}
    method.on_period(StepInfo(0, 0, [f.detach() for f in features]))

    assert (net.conv1.weight[0, 0] != stepped["conv1.weight"][0, 0]).any()  # channel 0 redrawn
    assert net.conv1.bias[0, 0] == 0.0
    assert torch.equal(net.conv2.weight[0, :, 0], torch.zeros(64, 3, 3))  # its outgoing weights zeroed
    assert torch.equal(net.conv1.weight[0, 1:], stepped["conv1.weight"][0, 1:])  # the others kept
    assert torch.equal(net.conv1.bias[0, 1:], stepped["conv1.bias"][0, 1:])
