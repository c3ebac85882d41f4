"""The world: a PyBullet Crazyflie, its controllers, tasks and Gymnasium registration.

Importing this package registers the environments, so both ``gymnasium.make("envs:LiquidDrones/
Hover-v0")`` in a fresh process and ``import envs; gymnasium.make("LiquidDrones/Hover-v0")`` work.
"""

from gymnasium.envs.registration import register, registry

from envs.follow import FollowEnv
from envs.forest import ForestEnv
from envs.hover import HoverEnv
from envs.params import CONTROL_HZ, CRAZYFLIE, PHYSICS_HZ, QuadrotorParams
from envs.waypoints import WaypointsEnv

ENV_IDS = ("LiquidDrones/Hover-v0", "LiquidDrones/Waypoints-v0", "LiquidDrones/Forest-v0",
           "LiquidDrones/Follow-v0")
_ENTRY_POINTS = ("envs.hover:HoverEnv", "envs.waypoints:WaypointsEnv", "envs.forest:ForestEnv",
                 "envs.follow:FollowEnv")

for _env_id, _entry in zip(ENV_IDS, _ENTRY_POINTS):
    if _env_id not in registry:
        # No TimeLimit wrapper: the envs truncate themselves at `episode_seconds`.
        register(id=_env_id, entry_point=_entry, disable_env_checker=False)

__all__ = ["CONTROL_HZ", "CRAZYFLIE", "ENV_IDS", "FollowEnv", "ForestEnv", "HoverEnv", "PHYSICS_HZ", "QuadrotorParams",
           "WaypointsEnv"]
