"""The world: a PyBullet Crazyflie, its controllers, tasks and Gymnasium registration.

Importing this package registers the environments, so both ``gymnasium.make("envs:LiquidDrones/
Hover-v0")`` in a fresh process and ``import envs; gymnasium.make("LiquidDrones/Hover-v0")`` work.
"""

from gymnasium.envs.registration import register, registry

from envs.hover import HoverEnv
from envs.params import CONTROL_HZ, CRAZYFLIE, PHYSICS_HZ, QuadrotorParams
from envs.waypoints import WaypointsEnv

ENV_IDS = ("LiquidDrones/Hover-v0", "LiquidDrones/Waypoints-v0")

for _env_id, _entry in zip(ENV_IDS, ("envs.hover:HoverEnv", "envs.waypoints:WaypointsEnv")):
    if _env_id not in registry:
        # No TimeLimit wrapper: the envs truncate themselves at `episode_seconds`.
        register(id=_env_id, entry_point=_entry, disable_env_checker=False)

__all__ = ["CONTROL_HZ", "CRAZYFLIE", "ENV_IDS", "HoverEnv", "PHYSICS_HZ", "QuadrotorParams",
           "WaypointsEnv"]
