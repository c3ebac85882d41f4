"""`liquid-drones bench env`: env steps per second per task and action mode, and memory over resets.

Each row steps one env in this process with uniformly random actions drawn in advance (the
policy costs nothing), resetting when an episode ends, so the figure is what RL sees: physics,
inner control loops, observation, reward and the resets that random flight causes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
from tqdm import tqdm

import envs
from agents.io import write_rows
from agents.report import print_rows, pyplot, save_figure

MODES = ("ctbr", "velocity", "motors")
# (env id, constructor kwargs): every task x action mode for Hover and Waypoints, and the sensor
# tasks in their default mode with and without the camera.
CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    *((env_id, {"action": mode}) for env_id in envs.ENV_IDS[:2] for mode in MODES),
    *((env_id, {"camera": camera}) for env_id in envs.ENV_IDS[2:] for camera in (False, True)),
)
MEMORY_RESETS = 10_000
MEMORY_SAMPLES = 10


def measure_steps_per_second(env_id: str, kwargs: dict[str, Any], steps: int,
                             seed: int = 0) -> dict[str, Any]:
    """Env steps/s of ``gym.make(env_id, **kwargs)`` over ``steps`` random-action steps."""
    env = gym.make(env_id, **kwargs)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 4)).astype(np.float32)
    env.reset(seed=seed)
    episodes = 1
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            episodes += 1
    elapsed = time.perf_counter() - start
    unwrapped = env.unwrapped
    env.close()
    sensors = "rays" if hasattr(unwrapped, "range_sensor") else "state"
    return {"env": env_id.split("/")[-1], "action": unwrapped.action_mode.name,
            "observation": sensors + (" + camera" if unwrapped.camera else ""),
            "physics_hz": unwrapped.pyb_freq,
            "control_hz": unwrapped.ctrl_freq, "steps": steps, "episodes": episodes,
            "steps_per_s": steps / elapsed, "us_per_step": elapsed / steps * 1e6}


def measure_reset_memory(env_id: str, resets: int = MEMORY_RESETS) -> list[dict[str, Any]]:
    """Resident memory (MiB) of this process while one env is reset ``resets`` times."""
    env = gym.make(env_id)
    process = psutil.Process(os.getpid())
    every = max(resets // MEMORY_SAMPLES, 1)
    env.reset(seed=0)
    samples = [{"env": env_id.split("/")[-1], "resets": 0,
                "rss_mib": process.memory_info().rss / 2**20}]
    for i in tqdm(range(1, resets + 1), desc=f"{env_id} resets", leave=False):
        env.reset(seed=i)
        env.step(env.action_space.sample())
        if i % every == 0:
            samples.append({"env": env_id.split("/")[-1], "resets": i,
                            "rss_mib": process.memory_info().rss / 2**20})
    env.close()
    return samples


def _plot(speed: list[dict[str, Any]], memory: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 4.5), width_ratios=(2, 1))
    labels = [f"{r['env']}\n{r['action']}\n{r['observation']}" for r in speed]
    left.bar(labels, [r["steps_per_s"] for r in speed], color="tab:blue")
    left.axhline(10_000, color="tab:red", linestyle="--", label="target (Hover ctbr)")
    left.set_ylabel("env steps / s (one process)")
    left.set_title("Simulation speed, physics 240 Hz / control 48 Hz")
    left.tick_params(axis="x", labelsize=7)
    left.legend()
    for env_name in dict.fromkeys(r["env"] for r in memory):
        rows = [r for r in memory if r["env"] == env_name]
        right.plot([r["resets"] for r in rows], [r["rss_mib"] for r in rows], marker="o",
                   label=env_name)
    growth = max(r["rss_mib"] for r in memory) - min(r["rss_mib"] for r in memory)
    right.set_ylim(0, 1.15 * max(r["rss_mib"] for r in memory))  # from 0: a flat line must look flat
    right.set_xlabel("resets")
    right.set_ylabel("resident memory of the process (MiB)")
    right.set_title(f"Memory over resets (whole range: {growth:.1f} MiB)")
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(out_dir: str = "runs/bench", quick: bool = False) -> list[dict[str, Any]]:
    """Measure every task x action mode, print the table, write env.csv/json/png in ``out_dir``."""
    steps = 2_000 if quick else 30_000
    resets = 500 if quick else MEMORY_RESETS
    speed = [measure_steps_per_second(env_id, kwargs, steps // 5 if kwargs.get("camera") else steps)
             for env_id, kwargs in tqdm(CASES, desc="env speed")]
    memory = [row for env_id in envs.ENV_IDS for row in measure_reset_memory(env_id, resets)]
    print_rows(speed, "Env steps per second (single process)")
    growth = {}
    for env_name in dict.fromkeys(r["env"] for r in memory):
        rows = [r for r in memory if r["env"] == env_name]
        growth[env_name] = rows[-1]["rss_mib"] - rows[1]["rss_mib"]
    print_rows([{"env": name, "resets": resets, "rss_mib_end": rows[-1]["rss_mib"],
                 "growth_mib_after_first_sample": growth[name]}
                for name, rows in ((n, [r for r in memory if r["env"] == n]) for n in growth)],
               "Resident memory over resets")
    write_rows(speed, out_dir, "env")
    write_rows(memory, out_dir, "env_memory")
    _plot(speed, memory, Path(out_dir) / "env.png")
    print(f"wrote {out_dir}/env.csv, env.json, env_memory.csv, env.png")
    return speed
