"""Observation encoders (SB3 features extractors) that feed any recurrent core.

`ConvStateEncoder` is the conv-head of the liquid-network drone papers: a small CNN turns a
camera image into a feature vector, which is concatenated with the state vector and handed to
the core (for example an NCP). The state comes *last*, so a step duration appended to the
state by ``envs.wrappers.AppendStepDuration`` stays the last feature, where
``CorePolicy(elapsed_in_obs=True)`` splits it off.
"""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class ConvStateEncoder(BaseFeaturesExtractor):
    """Dict observation ``{"image": [H, W, C] uint8, "state": [S]}`` -> features
    ``[image_features + S]``.

    SB3 hands images to the extractor channels-first ([B, C, H, W]) and scaled to [0, 1]
    (``normalize_images=True``), via its ``VecTransposeImage`` wrapper or ``preprocess_obs``.

    :param observation_space: the Dict space with keys ``image`` and ``state``
    :param image_features: size of the image embedding
    :param channels: output channels of the three conv layers (kernel 5/3/3, stride 2)
    """

    def __init__(self, observation_space: spaces.Dict, image_features: int = 64,
                 channels: tuple[int, int, int] = (16, 32, 32)) -> None:
        if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {
                "image", "state"}:
            raise ValueError(f"ConvStateEncoder needs a Dict space with keys 'image' and 'state', "
                             f"got {observation_space}")
        image_space, state_space = observation_space["image"], observation_space["state"]
        state_size = int(state_space.shape[0])
        super().__init__(observation_space, features_dim=image_features + state_size)
        shape = image_space.shape
        in_channels = shape[0] if shape[0] in (1, 3, 4) else shape[-1]
        c1, c2, c3 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        with th.no_grad():
            probe = th.zeros(1, in_channels, *self._spatial(shape))
            flat = self.conv(probe).shape[1]
        self.project = nn.Sequential(nn.Linear(flat, image_features), nn.ReLU())

    @staticmethod
    def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) of a channels-first or channels-last image shape."""
        return (shape[1], shape[2]) if shape[0] in (1, 3, 4) else (shape[0], shape[1])

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """Features ``[B, image_features + S]`` from images ``[B, C, H, W]`` and states ``[B, S]``."""
        image = self.project(self.conv(observations["image"]))
        return th.cat((image, observations["state"]), dim=-1)
