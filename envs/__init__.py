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

#: The tasks, in the order of `ENV_IDS`; a new task is its module plus one entry here.
TASKS = (HoverEnv, WaypointsEnv, ForestEnv, FollowEnv)
ENV_IDS = tuple(f"LiquidDrones/{task.__name__.removesuffix('Env')}-v0" for task in TASKS)
_CLASSES = dict(zip(ENV_IDS, TASKS))


def disturbance_axes(env_id: str, kwargs: dict | None = None) -> tuple[str, ...]:
    """The disturbance axes that ``env_id`` built with ``kwargs`` responds to, without building it.

    :raise ValueError: for an id that is not one of `ENV_IDS`
    """
    if env_id not in _CLASSES:
        raise ValueError(f"unknown env {env_id!r}; allowed: {', '.join(ENV_IDS)}")
    return _CLASSES[env_id].axes_with(camera=bool((kwargs or {}).get("camera", False)))


for _env_id, _task in _CLASSES.items():
    if _env_id not in registry:
        # No TimeLimit wrapper: the envs truncate themselves at `episode_seconds`.
        register(id=_env_id, entry_point=f"{_task.__module__}:{_task.__name__}", disable_env_checker=False)

__all__ = ["CONTROL_HZ", "CRAZYFLIE", "ENV_IDS", "TASKS", "FollowEnv", "ForestEnv", "HoverEnv", "PHYSICS_HZ",
           "QuadrotorParams", "WaypointsEnv", "disturbance_axes"]
