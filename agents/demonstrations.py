"""Expert demonstrations: episodes labelled by the env's cascaded PID, collected and batched as sequences.

`collect` flies episodes in ``batch`` envs stepped in lock step and records, at every step, the
observation the policy sees (raw, before normalisation; with the step duration appended for
time-aware cores) and the expert's action for that state (``env.unwrapped.expert_action()``, the
label). Who flies each step is drawn per step: the expert with probability ``beta``, otherwise
the learner (its recurrent state is carried every step, whoever flies); Gaussian noise of std
``action_noise`` is added to the flown action for state coverage. Behaviour cloning is ``beta =
1`` (only the expert flies); a DAgger round flies the learner mixed with the expert and labels
every visited state with the expert's action.

`Demonstrations` aggregates episodes over rounds, counts them (steps, and steps the learner flew,
per round), saves them as one ``.npz`` and lays them out for truncated back-propagation through
time (`Demonstrations.streams`): episodes placed back to back in ``B`` streams ``[T, B, F]`` with
``episode_starts`` where each begins, so that a recurrent core carries its state along a stream
and resets it exactly where an episode starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.flight import AgentSpec, make_env


@dataclass(frozen=True)
class Episode:
    """One recorded episode of ``T`` steps.

    :param obs: observations the policy sees, raw, ``[T, F]``
    :param labels: the expert's actions in those states, ``[T, A]`` in [-1, 1]
    :param learner: ``[T]`` bool, True where the learner's action was flown
    :param round: the DAgger round that collected it (0: behaviour-cloning demonstrations)
    """

    obs: np.ndarray
    labels: np.ndarray
    learner: np.ndarray
    round: int

    def __len__(self) -> int:
        return len(self.obs)


@dataclass(frozen=True)
class Streams:
    """Episodes laid back to back in ``B`` streams of ``T`` steps (shorter streams padded).

    ``obs [T, B, F]``, ``labels [T, B, A]``, ``starts [T, B]`` (1.0 where an episode begins),
    ``mask [T, B]`` (1.0 on real steps, 0.0 on padding).
    """

    obs: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    mask: np.ndarray


class Demonstrations:
    """The aggregated dataset of labelled episodes."""

    def __init__(self, episodes: Sequence[Episode] = ()) -> None:
        self.episodes: list[Episode] = list(episodes)

    def extend(self, episodes: Sequence[Episode]) -> None:
        self.episodes.extend(episodes)

    @property
    def steps(self) -> int:
        """Labelled steps (expert labels) in the dataset."""
        return sum(len(e) for e in self.episodes)

    @property
    def rounds(self) -> int:
        """Rounds collected so far (0 when empty)."""
        return max((e.round for e in self.episodes), default=-1) + 1

    def round_counts(self) -> list[dict[str, int]]:
        """Per round: episodes, labelled steps, steps the learner flew, and the dataset size after it."""
        rows, total = [], 0
        for k in range(self.rounds):
            episodes = [e for e in self.episodes if e.round == k]
            steps = sum(len(e) for e in episodes)
            total += steps
            rows.append({"round": k, "episodes": len(episodes), "steps": steps,
                         "learner_steps": int(sum(e.learner.sum() for e in episodes)), "dataset_steps": total})
        return rows

    def all_obs(self) -> np.ndarray:
        """Every recorded observation, ``[N, F]``."""
        return np.concatenate([e.obs for e in self.episodes])

    def streams(self, n_streams: int, rng: np.random.Generator | None = None) -> Streams:
        """The episodes (shuffled by ``rng``, else in order) placed in ``min(n_streams, episodes)``
        streams, each next episode on the shortest stream so far."""
        order = rng.permutation(len(self.episodes)) if rng is not None else np.arange(len(self.episodes))
        n = max(1, min(n_streams, len(self.episodes)))
        lanes: list[list[Episode]] = [[] for _ in range(n)]
        lengths = np.zeros(n, dtype=int)
        for i in order:
            lane = int(np.argmin(lengths))
            lanes[lane].append(self.episodes[i])
            lengths[lane] += len(self.episodes[i])
        first = self.episodes[0]
        steps = int(lengths.max())
        obs = np.zeros((steps, n, first.obs.shape[1]), np.float32)
        labels = np.zeros((steps, n, first.labels.shape[1]), np.float32)
        starts = np.zeros((steps, n), np.float32)
        mask = np.zeros((steps, n), np.float32)
        for lane, episodes in enumerate(lanes):
            t = 0
            for e in episodes:
                obs[t:t + len(e), lane], labels[t:t + len(e), lane] = e.obs, e.labels
                starts[t, lane] = 1.0
                mask[t:t + len(e), lane] = 1.0
                t += len(e)
            starts[t:, lane] = 1.0  # padding: no state flows into or out of it
        return Streams(obs, labels, starts, mask)

    def save(self, path: Path) -> None:
        """Write every episode to ``path`` (``.npz``: concatenated arrays plus episode lengths)."""
        with open(path, "wb") as handle:
            np.savez(handle, obs=self.all_obs(), labels=np.concatenate([e.labels for e in self.episodes]),
                     learner=np.concatenate([e.learner for e in self.episodes]),
                     lengths=np.array([len(e) for e in self.episodes]),
                     rounds=np.array([e.round for e in self.episodes]))

    @classmethod
    def load(cls, path: Path) -> Demonstrations:
        with np.load(path) as data:
            bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
            return cls([Episode(data["obs"][a:b], data["labels"][a:b], data["learner"][a:b], int(k))
                        for a, b, k in zip(bounds, bounds[1:], data["rounds"])])


def collect(spec: AgentSpec, seeds: Sequence[int], disturbances: dict[str, Any], round_: int,
            rng: np.random.Generator, beta: float = 1.0, action_noise: float = 0.0, learner: Any = None,
            batch: int = 8) -> list[Episode]:
    """Fly one episode per seed and label every step with the expert's action.

    :param spec: the env (`agents.flight.agent_of_config` of the training config)
    :param disturbances: the env's disturbances (ranges are drawn per episode)
    :param round_: recorded in each episode
    :param rng: draws who flies each step and the action noise
    :param beta: probability that a step flies the expert's action (1: the learner is never asked)
    :param action_noise: std of Gaussian noise added to the flown action (action units)
    :param learner: a pilot (`agents.flight.ModelPilot`) flying the other steps; needed when ``beta < 1``
    :return: the episodes, in the order of ``seeds``
    """
    if beta < 1.0 and learner is None:
        raise ValueError(f"beta {beta} < 1 lets the learner fly: pass a learner pilot")
    queue = deque(enumerate(seeds))
    envs = [make_env(spec, disturbances) for _ in range(min(batch, len(queue)))]
    n = len(envs)
    obs = np.zeros((n, *envs[0].observation_space.shape), np.float32)
    starts = np.ones(n, dtype=bool)
    records: list[dict[str, Any] | None] = [None] * n
    done: dict[int, Episode] = {}

    def start_next(slot: int) -> None:
        records[slot] = None
        starts[slot] = True
        if queue:
            index, seed = queue.popleft()
            obs[slot], _ = envs[slot].reset(seed=seed)
            records[slot] = {"index": index, "obs": [], "labels": [], "learner": []}

    if learner is not None:
        learner.begin()
    try:
        for slot in range(n):
            start_next(slot)
        while any(records):
            active = [env if records[i] else None for i, env in enumerate(envs)]
            labels = np.array([env.unwrapped.expert_action() if env else np.zeros(4) for env in active], np.float32)
            learner_flies = rng.random(n) >= beta
            noise = rng.normal(0.0, 1.0, labels.shape) * action_noise
            flown = labels
            if beta < 1.0:
                flown = np.where(learner_flies[:, None], learner.act(obs, starts, active, True), labels)
            flown = np.clip(flown + noise, -1.0, 1.0)
            starts[:] = False
            for slot, env in enumerate(active):
                if env is None:
                    continue
                record = records[slot]
                record["obs"].append(obs[slot].copy())
                record["labels"].append(labels[slot])
                record["learner"].append(bool(learner_flies[slot]) and beta < 1.0)
                obs[slot], _, terminated, truncated, _ = env.step(flown[slot])
                if terminated or truncated:
                    done[record["index"]] = Episode(np.array(record["obs"], np.float32),
                                                    np.array(record["labels"], np.float32),
                                                    np.array(record["learner"], bool), round_)
                    start_next(slot)
    finally:
        for env in envs:
            env.close()
    return [done[i] for i in range(len(seeds))]
