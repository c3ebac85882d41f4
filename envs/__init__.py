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

_CLASSES = dict(zip(ENV_IDS, (HoverEnv, WaypointsEnv, ForestEnv, FollowEnv)))


def disturbance_axes(env_id: str, kwargs: dict | None = None) -> tuple[str, ...]:
    """The disturbance axes that ``env_id`` built with ``kwargs`` responds to, without building it.

    :raise ValueError: for an id that is not one of `ENV_IDS`
    """
    if env_id not in _CLASSES:
        raise ValueError(f"unknown env {env_id!r}; allowed: {', '.join(ENV_IDS)}")
    return _CLASSES[env_id].axes_with(camera=bool((kwargs or {}).get("camera", False)))


for _env_id, _entry in zip(ENV_IDS, _ENTRY_POINTS):
    if _env_id not in registry:
        # No TimeLimit wrapper: the envs truncate themselves at `episode_seconds`.
        register(id=_env_id, entry_point=_entry, disable_env_checker=False)

__all__ = ["CONTROL_HZ", "CRAZYFLIE", "ENV_IDS", "disturbance_axes", "FollowEnv", "ForestEnv", "HoverEnv", "PHYSICS_HZ", "QuadrotorParams",
           "WaypointsEnv"]
