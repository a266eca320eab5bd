"""Properties of the neural reference (CQL, BC, offline DQN, BCQ) and its CartPole support code.

Every test checks a number that a specific mistake would change; the comment says which.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from offline_rl.algorithms.neural import (
    CQL,
    BCConfig,
    BCQConfig,
    BehaviorCloning,
    CQLConfig,
    DiscreteBCQ,
    NaiveDQN,
    bc_loss,
    bcq_allowed_actions,
    cql_loss,
    cql_penalty,
    soft_update,
    td_target,
)
from offline_rl.cartpole import (
    BEHAVIORS,
    ExpertValue,
    behavior_policy,
    epsilon_expert_policy,
    expert_policy,
    make_cartpole_dataset,
)
from offline_rl.datasets import OfflineDataset
from offline_rl.training import (
    evaluate_policy,
    evaluate_policy_batched,
    mlp,
    set_seed,
    to_torch_batch,
    train_offline,
)
from torch import nn


def _batch(n: int = 8, obs_dim: int = 4, n_actions: int = 3, seed: int = 0) -> dict:
    """A random torch minibatch with some terminals."""
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, obs_dim, generator=g),
        "actions": torch.randint(0, n_actions, (n,), generator=g),
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, obs_dim, generator=g),
        "terminals": (torch.arange(n) % 3 == 0).float(),
    }


@pytest.fixture(scope="module")
def small_cartpole() -> OfflineDataset:
    return make_cartpole_dataset("medium", n_episodes=5, seed=3, progress=False)


# ------------------------------------------------------------------------------ cql_penalty
@pytest.mark.parametrize("n_actions", [2, 3, 5])
def test_cql_penalty_of_constant_q_is_log_n_actions(n_actions):
    # max instead of logsumexp would give 0 here.
    q = torch.full((6, n_actions), 4.2)
    actions = torch.arange(6) % n_actions
    assert cql_penalty(q, actions).item() == pytest.approx(math.log(n_actions), abs=1e-6)
    if n_actions == 3:
        assert cql_penalty(q, actions).item() == pytest.approx(1.0986123, abs=1e-6)


def test_cql_penalty_hand_computed():
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    actions = torch.tensor([0, 2])
    row0 = math.log(math.e + math.e**2 + math.e**3) - 1.0
    row1 = math.log(2.0 + math.e) - 1.0
    expected = (row0 + row1) / 2  # 1.4795...
    assert cql_penalty(q, actions).item() == pytest.approx(expected, abs=1e-6)
    # The classic mistakes give clearly different numbers on this input.
    with_max = (q.max(1).values - q[torch.arange(2), actions]).mean().item()
    summed = (torch.logsumexp(q, 1) - q[torch.arange(2), actions]).sum().item()
    assert abs(with_max - expected) > 0.1 and abs(summed - expected) > 0.1


def test_cql_penalty_is_nonnegative():
    g = torch.Generator().manual_seed(1)
    for scale in (0.01, 1.0, 100.0):
        q = scale * torch.randn(64, 4, generator=g)
        actions = torch.randint(0, 4, (64,), generator=g)
        assert cql_penalty(q, actions).item() >= 0.0


def test_cql_penalty_gradient_pushes_down_all_and_up_the_data_action():
    q = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    actions = torch.tensor([1, 0])
    cql_penalty(q, actions).backward()
    grad = q.grad
    # Gradient descent moves Q opposite to the gradient: + gradient = pushed down.
    data_mask = F.one_hot(actions, 3).bool()
    assert torch.all(grad[data_mask] < 0), "the dataset action's Q must be pushed up"
    assert torch.all(grad[~data_mask] > 0), "every other action's Q must be pushed down"
    # Per state the gradient is (softmax(Q) - onehot(a)) / B, which sums to 0.
    expected = (torch.softmax(q.detach(), 1) - data_mask.float()) / 2
    torch.testing.assert_close(grad, expected)


# ------------------------------------------------------------------------------ bc_loss
def test_bc_loss_equals_cross_entropy_and_distinguishes_mistakes():
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(16, 3, generator=g)
    actions = torch.randint(0, 3, (16,), generator=g)
    loss = bc_loss(logits, actions).item()
    assert loss == pytest.approx(F.cross_entropy(logits, actions).item(), abs=1e-6)
    rows = torch.arange(16)
    probs_mistake = -torch.softmax(logits, 1)[rows, actions].mean().item()
    raw_logits_mistake = -logits[rows, actions].mean().item()
    assert abs(probs_mistake - loss) > 0.1
    assert abs(raw_logits_mistake - loss) > 0.1


@pytest.mark.parametrize("n_actions", [2, 4])
def test_bc_loss_of_uniform_logits_is_log_n_actions(n_actions):
    logits = torch.zeros(5, n_actions)
    actions = torch.arange(5) % n_actions
    assert bc_loss(logits, actions).item() == pytest.approx(math.log(n_actions), abs=1e-6)


# ------------------------------------------------------------------------------ td_target
def test_td_target_masks_terminals_and_has_no_gradient():
    rewards = torch.tensor([1.0, 1.0, 0.5])
    next_q = torch.tensor([[2.0, 5.0], [3.0, -1.0], [0.0, 10.0]], requires_grad=True)
    terminals = torch.tensor([0.0, 1.0, 0.0])
    y = td_target(rewards, next_q, terminals, gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 5.0, 1.0, 0.5 + 0.9 * 10.0]))
    assert not y.requires_grad
    # bool terminals (as stored in OfflineDataset) give the same target.
    torch.testing.assert_close(td_target(rewards, next_q, terminals.bool(), 0.9), y)


def test_td_target_rejects_column_vectors():
    with pytest.raises(ValueError, match=r"rewards must have shape \(B,\)"):
        td_target(torch.zeros(3, 1), torch.zeros(3, 2), torch.zeros(3), 0.9)
    with pytest.raises(ValueError, match=r"terminals must have shape \(B,\)"):
        td_target(torch.zeros(3), torch.zeros(3, 2), torch.zeros(3, 1), 0.9)


# ------------------------------------------------------------------------------ cql_loss
def test_cql_loss_matches_the_objective_by_hand():
    torch.manual_seed(0)
    q_net, target_net = nn.Linear(4, 3), nn.Linear(4, 3)
    batch = _batch()
    alpha, gamma = 0.7, 0.95
    loss, info = cql_loss(q_net, target_net, batch, alpha, gamma)
    with torch.no_grad():
        q = q_net(batch["observations"])
        rows = torch.arange(8)
        q_sa = q[rows, batch["actions"]]
        y = (
            batch["rewards"]
            + gamma
            * (1 - batch["terminals"])
            * target_net(batch["next_observations"]).max(1).values
        )
        bellman = 0.5 * ((q_sa - y) ** 2).mean()  # the chapter's 1/2
        penalty = (torch.logsumexp(q, 1) - q_sa).mean()
    assert set(info) == {"bellman_loss", "cql_penalty", "total_loss"}
    assert info["bellman_loss"] == pytest.approx(bellman.item(), rel=1e-5)
    assert info["cql_penalty"] == pytest.approx(penalty.item(), rel=1e-5)
    assert loss.item() == pytest.approx((bellman + alpha * penalty).item(), rel=1e-5)
    # The target is fixed: no gradient reaches the target network.
    loss.backward()
    assert all(p.grad is None for p in target_net.parameters())
    assert all(p.grad is not None for p in q_net.parameters())


@pytest.mark.parametrize(
    "bad_actions, message",
    [
        (lambda a: a.unsqueeze(1), r"shape \(B,\)"),
        (lambda a: a.float(), "int64"),
        (lambda a: a.int(), "int64"),
    ],
)
def test_wrong_action_shapes_and_dtypes_raise(bad_actions, message):
    batch = _batch()
    batch["actions"] = bad_actions(batch["actions"])
    q_net, target_net = nn.Linear(4, 3), nn.Linear(4, 3)
    with pytest.raises(ValueError, match=message):
        cql_loss(q_net, target_net, batch, 1.0, 0.99)
    with pytest.raises(ValueError, match=message):
        cql_penalty(torch.zeros(8, 3), batch["actions"])
    with pytest.raises(ValueError, match=message):
        bc_loss(torch.zeros(8, 3), batch["actions"])


def test_soft_update():
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    before = [p.clone() for p in target.parameters()]
    soft_update(target, source, 0.25)
    for t, b, s in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)
    soft_update(target, source, 1.0)
    for t, s in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(t, s)
    with pytest.raises(ValueError, match="tau"):
        soft_update(target, source, 0.0)


# ------------------------------------------------------------------------------ agents
def test_agents_update_and_act(small_cartpole):
    batch = to_torch_batch(small_cartpole.sample(32, np.random.default_rng(0)))
    obs = small_cartpole.observations[0]
    small = (32, 32)
    cql = CQL(4, 2, CQLConfig(hidden=small))
    assert set(cql.update(batch)) == {"bellman_loss", "cql_penalty", "total_loss"}
    assert cql.act(obs) in (0, 1)
    assert cql.compute_cql_penalty(batch["observations"], batch["actions"]).item() >= 0
    assert NaiveDQN(4, 2, CQLConfig(alpha=5.0)).config.alpha == 0.0
    bc = BehaviorCloning(4, 2, BCConfig(hidden=small))
    assert set(bc.update(batch)) == {"bc_loss"}
    assert bc.act(obs) in (0, 1)
    bcq = DiscreteBCQ(4, 2, BCQConfig(hidden=small))
    assert set(bcq.update(batch)) == {"bellman_loss", "bc_loss", "total_loss"}
    assert bcq.act(obs) in (0, 1)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cql.act(np.zeros(3))


def test_cql_soft_update_moves_target_toward_q_net():
    agent = CQL(4, 2, CQLConfig(hidden=(8,), tau=0.5))
    with torch.no_grad():
        for p in agent.q_net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.target_net.parameters()]
    agent.soft_update(0.5)
    for t, b, q in zip(agent.target_net.parameters(), before, agent.q_net.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * q)


def test_hard_target_update_every_interval_steps(small_cartpole):
    # tau = 1 with an interval N is DQN's hard copy: the target stays frozen for N - 1 steps,
    # then equals the Q-network. Updating every step (the interval ignored) fails the first check.
    agent = CQL(4, 2, CQLConfig(hidden=(8,), tau=1.0, target_update_interval=3))
    frozen = [p.clone() for p in agent.target_net.parameters()]
    rng = np.random.default_rng(0)
    for step in (1, 2, 3):
        agent.update(to_torch_batch(small_cartpole.sample(16, rng)))
        now = list(agent.target_net.parameters())
        if step < 3:
            assert all(torch.equal(t, f) for t, f in zip(now, frozen)), f"moved at step {step}"
    assert all(torch.equal(t, q) for t, q in zip(now, agent.q_net.parameters()))
    assert not all(torch.equal(t, f) for t, f in zip(now, frozen))
    with pytest.raises(ValueError, match="target_update_interval"):
        CQL(4, 2, CQLConfig(target_update_interval=0))


def test_fused_adam_does_the_same_arithmetic_as_adam():
    # The agents use fused Adam for speed; it must be Adam (same lr, betas, eps, bias correction).
    from offline_rl.algorithms.neural import _adam

    nets = [mlp(4, 2, (8,)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [_adam(nets[0].parameters(), 1e-2), torch.optim.Adam(nets[1].parameters(), 1e-2)]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 4, generator=g)
        for net, opt in zip(nets, optimizers):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for fused, plain in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_cql_step_on_flat_vectors_is_adam_and_polyak_on_each_tensor(small_cartpole):
    # CQL keeps its parameters, their gradients and the target's in flat vectors (one Adam call,
    # one lerp per step). The same steps with torch.optim.Adam(fused=True) and the per-tensor
    # soft_update must give the same networks bit for bit: a slice at the wrong offset, a
    # gradient view that backward() replaced, or a target vector in another order would not.
    from offline_rl.algorithms.neural import _cql_objective

    config = CQLConfig(hidden=(16, 16), tau=0.1, seed=3, lr=1e-2)
    agent = CQL(4, 2, config)
    q_net = mlp(4, 2, config.hidden)
    q_net.load_state_dict(agent.q_net.state_dict())
    target = mlp(4, 2, config.hidden).requires_grad_(False)
    target.load_state_dict(agent.target_net.state_dict())
    adam = torch.optim.Adam(q_net.parameters(), lr=config.lr, fused=True)
    rng = np.random.default_rng(0)
    for _ in range(10):
        batch = to_torch_batch(small_cartpole.sample(16, rng))
        agent.update(batch)
        loss, _ = _cql_objective(q_net, target, batch, config.alpha, config.gamma, huber=True)
        adam.zero_grad()
        loss.backward()
        adam.step()
        soft_update(target, q_net, config.tau)
    for mine, theirs in [(agent.q_net, q_net), (agent.target_net, target)]:
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A .grad that someone replaced would silently stop training: the step refuses instead.
    agent.q_net[0].weight.grad = None
    with pytest.raises(RuntimeError, match="grad was replaced"):
        agent.optimizer.step()


def test_train_offline_feeds_the_minibatches_dataset_sample_draws(small_cartpole):
    # train_offline converts the dataset once and gathers rows; the minibatches must be exactly
    # those of to_torch_batch(dataset.sample(batch_size, rng)) with rng seeded by ``seed``.
    seen: list[dict[str, torch.Tensor]] = []

    class Recorder:
        def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            seen.append(batch)
            return {"loss": batch["rewards"].sum()}  # a 0-d tensor, logged as a float

    history = train_offline(Recorder(), small_cartpole, 3, 8, seed=5, progress=False, log_every=1)
    rng = np.random.default_rng(5)
    for batch in seen:
        expected = to_torch_batch(small_cartpole.sample(8, rng))
        assert batch.keys() == expected.keys()
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype, key
            torch.testing.assert_close(batch[key], value, rtol=0, atol=0)
    assert history["loss"] == [float(b["rewards"].sum()) for b in seen]
    assert all(type(v) is float for v in history["loss"])


def test_bcq_threshold_restricts_actions():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    # ratios to the most likely action: 1, 0.5, 1/6
    assert bcq_allowed_actions(logits, 0.4).tolist() == [[True, True, False]]
    assert bcq_allowed_actions(logits, 1.0).tolist() == [[True, False, False]]
    assert bcq_allowed_actions(logits, 0.0).all()
    agent = DiscreteBCQ(2, 3, BCQConfig(hidden=(8,), threshold=0.4))
    with torch.no_grad():
        for p in [*agent.q_net.parameters(), *agent.bc_net.parameters()]:
            p.zero_()
        agent.bc_net[-1].bias.copy_(logits[0])
        agent.q_net[-1].bias.copy_(torch.tensor([0.0, 1.0, 5.0]))  # best Q is not allowed
    assert agent.act(np.zeros(2)) == 1


# ------------------------------------------------------------------------------ determinism
def _losses(seed: int, dataset: OfflineDataset, n_steps: int = 30) -> list[float]:
    agent = CQL(4, 2, CQLConfig(hidden=(32, 32), seed=seed))
    history = train_offline(agent, dataset, n_steps, 64, seed=seed, progress=False, log_every=1)
    return history["total_loss"]


def test_same_seed_same_losses(small_cartpole):
    torch.manual_seed(123)  # the global RNG must not matter
    first = _losses(0, small_cartpole)
    torch.manual_seed(456)
    assert _losses(0, small_cartpole) == first
    assert _losses(1, small_cartpole) != first


def test_same_seed_same_dataset():
    a = make_cartpole_dataset(0.5, 3, seed=7, progress=False)
    b = make_cartpole_dataset(0.5, 3, seed=7, progress=False)
    c = make_cartpole_dataset(0.5, 3, seed=8, progress=False)
    for name, value in a.as_dict().items():
        np.testing.assert_array_equal(value, getattr(b, name))
    assert len(a) != len(c) or not np.array_equal(a.actions, c.actions)
    assert a.observations.dtype == np.float32 and a.observations.shape == (len(a), 4)


# ------------------------------------------------------------------------------ support code
def test_expert_balances_and_poor_behavior_does_not():
    returns = evaluate_policy("CartPole-v1", lambda o: expert_policy(o, None), 5, seed=0)
    assert np.all(returns == 500.0)
    poor = make_cartpole_dataset("poor", 30, seed=0, progress=False)
    assert poor.episode_returns().mean() < 50
    assert BEHAVIORS["random"] == 0.0 and BEHAVIORS["expert"] == 1.0


def test_evaluate_policy_batched_plays_the_episodes_evaluate_policy_plays():
    # Row-wise arithmetic only (no matmul, whose rounding may depend on the batch size), so the
    # one-at-a-time and the batched calls choose the same actions in every state.
    def policy(obs: np.ndarray) -> np.ndarray:
        return (obs[:, 3] > 0).astype(np.int64)  # (n,): episodes of 138 to 244 steps

    batch_sizes: list[int] = []

    def act_batch(obs: np.ndarray) -> np.ndarray:
        batch_sizes.append(len(obs))
        return policy(obs)

    one_by_one = evaluate_policy("CartPole-v1", lambda o: int(policy(o[None])[0]), 6, seed=3)
    batched = evaluate_policy_batched("CartPole-v1", act_batch, 6, seed=3)
    # Episodes of different lengths: those that end first must leave the batch, not be stepped
    # on (a terminated CartPole pays 0 and warns: the returns alone would not tell), nor end
    # the others. So the policy sees each episode's states once: as many rows as steps.
    assert len(set(one_by_one.tolist())) == 6
    np.testing.assert_array_equal(batched, one_by_one)
    assert sum(batch_sizes) == one_by_one.sum() and batch_sizes[0] == 6
    assert batched.dtype == np.float64 and batched.shape == (6,)


def test_act_batch_is_act_on_every_row(small_cartpole):
    obs = small_cartpole.observations[:50]
    for agent in (CQL(4, 2, CQLConfig(hidden=(16,), seed=1)), BehaviorCloning(4, 2)):
        assert agent.act_batch(obs).tolist() == [agent.act(o) for o in obs]


def test_evaluate_policy_batched_refuses_a_wrong_number_of_actions():
    with pytest.raises(ValueError, match=r"one action per observation, shape \(4,\)"):
        evaluate_policy_batched("CartPole-v1", lambda obs: np.zeros((len(obs), 1)), 4)
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate_policy_batched("CartPole-v1", lambda obs: obs[:, 0] > 0, 0)


def test_evaluate_policy_is_deterministic():
    policy = behavior_policy("medium")
    rng = np.random.default_rng(0)

    def medium_behavior(obs: np.ndarray) -> int:
        return policy(obs, rng)

    a = evaluate_policy("CartPole-v1", lambda o: int(o[2] > 0), 3, seed=5)
    b = evaluate_policy("CartPole-v1", lambda o: int(o[2] > 0), 3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert evaluate_policy("CartPole-v1", medium_behavior, 2, seed=0).shape == (2,)


def test_to_torch_batch_dtypes_and_shapes(small_cartpole):
    batch = to_torch_batch(small_cartpole.sample(16, np.random.default_rng(0)))
    assert batch["observations"].dtype == torch.float32
    assert batch["observations"].shape == (16, 4)
    assert batch["actions"].dtype == torch.int64 and batch["actions"].shape == (16,)
    assert batch["rewards"].shape == (16,) and batch["terminals"].shape == (16,)
    assert batch["terminals"].dtype == torch.float32
    assert set(batch["terminals"].unique().tolist()) <= {0.0, 1.0}


def test_train_offline_logs_every_key(small_cartpole):
    agent = BehaviorCloning(4, 2, BCConfig(hidden=(16,)))
    history = train_offline(agent, small_cartpole, 25, 32, seed=0, progress=False, log_every=10)
    assert history["step"] == [10.0, 20.0, 25.0]
    assert len(history["bc_loss"]) == 3
    with pytest.raises(TypeError, match="update"):
        train_offline(object(), small_cartpole, 1, 1, progress=False)


def test_set_seed_and_mlp():
    set_seed(3)
    a = mlp(4, 2, (8,))(torch.ones(1, 4))
    set_seed(3)
    b = mlp(4, 2, (8,))(torch.ones(1, 4))
    torch.testing.assert_close(a, b)
    assert a.shape == (1, 2)


@pytest.mark.parametrize("quality", [1.5, -0.1, float("nan"), "great", None, True])
def test_bad_quality_raises(quality):
    with pytest.raises(ValueError, match=r"quality|behavior"):
        make_cartpole_dataset(quality, 2, seed=0, progress=False)


def test_bad_inputs_raise_clear_errors(small_cartpole):
    with pytest.raises(ValueError, match="n_episodes"):
        make_cartpole_dataset(0.5, 0, seed=0, progress=False)
    with pytest.raises(ValueError, match="epsilon"):
        epsilon_expert_policy(2.0)
    fields = small_cartpole.as_dict()
    fields["observations"] = fields["observations"].copy()
    fields["observations"][3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        OfflineDataset(**fields)
    numpy_batch = small_cartpole.sample(4, np.random.default_rng(0))
    numpy_batch["actions"] = numpy_batch["actions"][:, None]
    with pytest.raises(ValueError, match=r"actions'\] must have shape \(B,\)"):
        to_torch_batch(numpy_batch)
    numpy_batch = small_cartpole.sample(4, np.random.default_rng(0))
    numpy_batch["rewards"] = numpy_batch["rewards"][:, None]
    with pytest.raises(ValueError, match="rewards"):
        to_torch_batch(numpy_batch)
    with pytest.raises(ValueError, match="alpha"):
        CQL(4, 2, CQLConfig(alpha=-1.0))


# ------------------------------------------------------------------------------ CartPole claim
# The notebook's CartPole cell: 20 expert episodes (10,000 transitions, the other action never
# taken, no terminal), 128x128 networks, Adam lr 1e-3, 1,000 steps at batch 64, target copied
# every 20 steps (50 backups), alpha 0 / 1, greedy return over 10 episodes from
# reset(seed=1 + i), and the penalty-free yardstick (alpha 0, target Q(s', expert(s')) through
# cartpole.ExpertValue). The reference agents are the notebook's StudentCQL with the solution's
# cql_loss: same init (torch.manual_seed(seed) then mlp), Adam, loss, minibatches. The budget's
# cap is sum_{t<51} 0.99^t = 40.1. Margins per seed: benchmarks/cartpole_claim.py.
# The previous design (256x256, lr 3e-4, 2,000 steps, a copy every 100: 20 backups, cap 19.0)
# cost about three times as much; cut to 1,000 or 1,400 steps it broke (too few backups for
# naive DQN's over-estimation to compound). With 64x64 networks naive DQN's promise (37.4 on
# seed 0) stays under the cap: a narrower network extrapolates to the unseen action less.
CLAIM_SEEDS = (0, 1, 2, 3, 4)
CLAIM_EPISODES, CLAIM_STEPS, CLAIM_BATCH, CLAIM_TARGET_EVERY = 20, 1000, 64, 20
CLAIM_HIDDEN, CLAIM_LR = (128, 128), 1e-3
# BC (256x256, lr 1e-3) balances for 500 steps on seeds 0-9 after 500 steps; with 128x128 one
# episode of seed 7 falls at step 134.
CLAIM_BC_STEPS = 500
# About one backup per target copy, plus the first: values grow over at most this many steps.
CLAIM_BACKUPS = CLAIM_STEPS // CLAIM_TARGET_EVERY + 1
EVAL_EPISODES, EVAL_SEED, GAMMA = 10, 1, 0.99


def claim_config() -> CQLConfig:
    """The notebook's agent: the solution's cql_loss, 1/2 (Q - y)^2 (not the Huber default),
    hard target copies, its network and learning rate."""
    return CQLConfig(
        tau=1.0, target_update_interval=CLAIM_TARGET_EVERY, huber=False,
        hidden=CLAIM_HIDDEN, lr=CLAIM_LR,
    )  # fmt: skip


def _eval_starts() -> np.ndarray:
    """(EVAL_EPISODES, 4): the evaluation episodes' start states."""
    env = gym.make("CartPole-v1")
    starts = np.array([env.reset(seed=EVAL_SEED + i)[0] for i in range(EVAL_EPISODES)])
    env.close()
    return starts


def _promised_and_achieved(agent: CQL) -> tuple[float, float, float]:
    """(mean return, mean max_a Q(s0, a), mean discounted return) over the evaluation episodes."""
    returns = evaluate_policy_batched("CartPole-v1", agent.act_batch, EVAL_EPISODES, EVAL_SEED)
    promised = float(agent.q_values(_eval_starts()).max(axis=1).mean())
    # Reward 1 per step: an episode of T steps has discounted return (1 - gamma^T) / (1 - gamma).
    achieved = float(((1 - GAMMA**returns) / (1 - GAMMA)).mean())
    return float(returns.mean()), promised, achieved


def _yardstick_promise(seed: int, dataset: OfflineDataset, config: CQLConfig) -> float:
    """The notebook's penalty-free row: alpha 0, the target evaluates the expert's next action;
    returns the mean of Q(s0, expert(s0)) over the evaluation starts."""
    agent = CQL(4, 2, replace(config, alpha=0.0, seed=seed))
    agent.target_net = ExpertValue(agent.target_net)  # the same parameters, seen through the expert
    train_offline(agent, dataset, CLAIM_STEPS, CLAIM_BATCH, seed=seed, progress=False)
    with torch.no_grad():
        return float(ExpertValue(agent.q_net)(torch.as_tensor(_eval_starts()))[:, 0].mean())


def cartpole_claim(seed: int, dataset: OfflineDataset, config: CQLConfig) -> dict[str, float]:
    """Train naive DQN, CQL and the penalty-free yardstick as the notebook does and return each
    assertion's margin (>= 0 where it holds) with the numbers behind it; assert nothing."""
    rows = {}
    for name, alpha in (("naive", 0.0), ("cql", 1.0)):
        agent = CQL(4, 2, replace(config, alpha=alpha, seed=seed))
        train_offline(agent, dataset, CLAIM_STEPS, CLAIM_BATCH, seed=seed, progress=False)
        rows[name] = _promised_and_achieved(agent)
    (naive_ret, naive_promised, naive_achieved), (cql_ret, cql_promised, _) = (
        rows["naive"],
        rows["cql"],
    )
    yardstick = _yardstick_promise(seed, dataset, config)
    bc = BehaviorCloning(4, 2, BCConfig(seed=seed))  # the notebook's StudentBC: lr 1e-3, 256x256
    train_offline(bc, dataset, CLAIM_BC_STEPS, CLAIM_BATCH, seed=seed, progress=False)
    bc_returns = evaluate_policy_batched("CartPole-v1", bc.act_batch, EVAL_EPISODES, EVAL_SEED)
    bc_ret = float(bc_returns.mean())
    cap = (1 - GAMMA**CLAIM_BACKUPS) / (1 - GAMMA)  # sum_{t < backups} gamma^t
    return {
        # Visible margin: CQL balances at least 200 steps longer than naive DQN.
        "cql_beats_naive": cql_ret - (naive_ret + 200),
        # Over-estimation: naive DQN's value of the start state is at least twice, and 10 above,
        # what its own policy achieves from there.
        "naive_twice_achieved": naive_promised - 2 * naive_achieved,
        "naive_10_above_achieved": naive_promised - (naive_achieved + 10),
        # The text: CQL's low promise is the training budget, not the penalty. The same network
        # without the penalty, evaluating the expert, promises the same within a tenth of the
        # cap, and both are within a tenth of the budget's cap (far below the 99.3 achieved).
        "cql_is_yardstick": 0.1 * cap - abs(cql_promised - yardstick),
        "promises_at_cap": 0.1 * cap - max(abs(cql_promised - cap), abs(yardstick - cap)),
        # "BC does as well as CQL here".
        "bc_as_good": bc_ret - cql_ret,
        # The real contrast: naive DQN promises more than the budget can justify, by 5 or more.
        "naive_above_cap": naive_promised - (cap + 5.0),
        "naive_return": naive_ret, "naive_promised": naive_promised,
        "naive_achieved": naive_achieved, "cql_return": cql_ret, "cql_promised": cql_promised,
        "yardstick": yardstick, "bc_return": bc_ret, "cap": cap,
    }  # fmt: skip


#: The keys of ``cartpole_claim``'s result that are margins (the others are the numbers).
CLAIM_MARGINS = (
    "cql_beats_naive", "naive_twice_achieved", "naive_10_above_achieved", "cql_is_yardstick",
    "promises_at_cap", "bc_as_good", "naive_above_cap",
)  # fmt: skip


def run_cartpole_claim(seed: int) -> dict[str, float]:
    """The claim on one seed (data seed = training seed), on one torch thread as the notebook."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_cartpole_dataset("expert", CLAIM_EPISODES, seed=seed, progress=False)
        # The design the claim needs: one action per state and no terminal in the data.
        assert not data.terminals.any() and len(data) == CLAIM_EPISODES * 500
        return cartpole_claim(seed, data, claim_config())
    finally:
        torch.set_num_threads(threads)


def test_the_claim_trains_as_the_notebooks_cartpole_cell():
    """The claim holds for the settings the notebook runs: the same data, steps, batch, target."""
    from pathlib import Path

    master = (Path(__file__).resolve().parents[1] / "assignments/offline_rl/master.py").read_text()
    for setting in (
        f'make_cartpole_dataset("expert", n_episodes={CLAIM_EPISODES},',
        f'steps = {CLAIM_BC_STEPS} if label == "BC" else {CLAIM_STEPS}',
        f"n_steps=steps, batch_size={CLAIM_BATCH},",
        f"target_every={CLAIM_TARGET_EVERY},",
        f"hidden={CLAIM_HIDDEN}",
    ):
        assert setting in master, f"the notebook's CartPole cell no longer has {setting!r}"
    # StudentCQL's learning rate, as a number (1e-3 and 0.001 are the same setting).
    lr = re.search(r"class StudentCQL:.*?def __init__\(.*?\blr=([0-9.e+-]+)", master, re.S)
    assert lr and float(lr[1]) == CLAIM_LR, "StudentCQL's learning rate is not the claim's"
    # The conclusion the claim backs: a penalty-free row beside CQL, and not the old reading
    # "CQL promises less than it achieves (the lower bound ...)", which the yardstick refutes.
    assert "evaluate_expert=True" in master, "the CartPole cell has no penalty-free yardstick row"
    assert "(the lower bound of the previous section)" not in master, (
        "the CartPole text still credits CQL's low promise to the lower bound"
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", CLAIM_SEEDS)
def test_naive_dqn_overestimates_and_loses_to_cql_on_expert_cartpole_data(seed):
    result = run_cartpole_claim(seed)
    summary = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
    failed = [k for k in CLAIM_MARGINS if result[k] < 0]
    assert not failed, f"seed {seed}: the CartPole claim fails on {failed}; {summary}"
