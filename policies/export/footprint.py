"""Flash, RAM and arithmetic of the exported C step, sized for a microcontroller.

`c_footprint` compiles the generated source with ``cc -std=c99 -Os -c -fstack-usage`` and reads
``size`` (Berkeley format: ``text`` holds code and the ``const`` weights). Figures are for the host
compiler; an ARM build differs in code bytes (Thumb-2 is denser) but not in weight bytes.

Cycle estimate for a Cortex-M4F such as the Crazyflie's STM32F405 (168 MHz, single-precision
FPU, in-order, about one instruction per cycle; ``VMLA.F32`` 3, ``VDIV.F32`` 14 cycles):
``CYCLES_PER_MAC`` per multiply-accumulate (two loads, the multiply-add, index and branch: the
host build runs ~7.5 instructions per MAC at -Os, see `instructions_per_step`),
``CYCLES_PER_TRANSCENDENTAL`` per ``expf``/``tanhf``/``erff`` (newlib's float versions, assumed)
and ``CYCLES_PER_DIVISION`` per division. It is an estimate, not a measurement on the chip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from stable_baselines3.common.policies import ActorCriticPolicy

from policies.export.actor import NormStats, actor_parts
from policies.export.c import export_c, program

CYCLES_PER_MAC = 8
CYCLES_PER_TRANSCENDENTAL = 100
CYCLES_PER_DIVISION = 14
CLOCK_HZ = 168e6  # STM32F405


def compiled_size(source: Path, compiler: str | None = None) -> dict[str, int]:
    """``text``, ``data``, ``bss`` (bytes, from ``size``) and the step's stack bytes of one C file."""
    compiler = compiler or os.environ.get("CC", "cc")
    if shutil.which(compiler) is None or shutil.which("size") is None:
        raise RuntimeError(f"the footprint needs a C compiler ({compiler!r}) and binutils' size on the PATH")
    obj = source.with_suffix(".o")
    subprocess.run([compiler, "-std=c99", "-Os", "-fstack-usage", "-c", str(source), "-o", str(obj)],
                   check=True, capture_output=True, text=True, cwd=source.parent)
    text, data, bss = subprocess.run(["size", str(obj)], check=True, capture_output=True,
                                     text=True).stdout.splitlines()[1].split()[:3]
    stack = 0
    for line in obj.with_suffix(".su").read_text().splitlines():
        if line.split("\t")[0].endswith("_step"):
            stack = int(line.split("\t")[1])
    return {"text": int(text), "data": int(data), "bss": int(bss), "stack": stack}


def c_footprint(policy: ActorCriticPolicy, norm: NormStats | None = None) -> dict[str, float]:
    """Sizes and cost of one step of ``policy``'s exported C actor.

    :return: ``parameters`` (of the actor's modules), ``parameter_bytes`` (the const arrays:
        weights, statistics, synapse indices), ``flash_bytes`` (text + data of ``-Os``),
        ``state_bytes``, ``stack_bytes`` (the step's frame: scratch arrays), ``ram_bytes`` (state +
        stack + data + bss), ``macs``, ``transcendentals``, ``divisions`` per step,
        ``cycles_m4`` (estimate) and ``microseconds_168mhz``
    """
    parts = actor_parts(policy)
    p = program(parts, norm)
    with tempfile.TemporaryDirectory() as folder:
        source = export_c(parts, norm, Path(folder))[0]
        sizes = compiled_size(source)
    cycles = (CYCLES_PER_MAC * p.macs + CYCLES_PER_TRANSCENDENTAL * p.transcendentals
              + CYCLES_PER_DIVISION * p.divisions)
    state_bytes = 4 * parts.state_size
    return {
        "parameters": parts.parameter_count(),
        "parameter_bytes": p.parameter_bytes,
        "flash_bytes": sizes["text"] + sizes["data"],
        "state_bytes": state_bytes,
        "stack_bytes": sizes["stack"],
        "ram_bytes": state_bytes + sizes["stack"] + sizes["data"] + sizes["bss"],
        "macs": p.macs,
        "transcendentals": p.transcendentals,
        "divisions": p.divisions,
        "cycles_m4": cycles,
        "microseconds_168mhz": round(cycles / CLOCK_HZ * 1e6, 1),
    }


#: A program stepping the exported actor ``argv[1]`` times from a fixed observation.
_DRIVER = r"""#include "actor.h"
#include <stdlib.h>
int main(int argc, char **argv)
{
    float state[ACTOR_STATE_SIZE + 1], obs[ACTOR_OBS_SIZE], action[ACTOR_ACTION_SIZE];
    int steps = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < ACTOR_OBS_SIZE; ++i) obs[i] = 0.1f * (float)(i % 7) - 0.3f;
    obs[ACTOR_OBS_SIZE - 1] = 1.0f / 48.0f;
    actor_reset(state);
    for (int t = 0; t < steps; ++t) actor_step(state, obs, action);
    return action[0] > 1e30f;
}
"""


def instructions_per_step(policy: ActorCriticPolicy, norm: NormStats | None = None) -> float | None:
    """Host instructions of one C step (valgrind's callgrind, ``-Os``, the host libm): the
    difference between 200 and 100 steps, over 100. None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    with tempfile.TemporaryDirectory() as folder:
        source = export_c(actor_parts(policy), norm, Path(folder))[0]
        (source.parent / "main.c").write_text(_DRIVER)
        program_path = source.parent / "main"
        subprocess.run([os.environ.get("CC", "cc"), "-std=c99", "-Os", "-o", str(program_path), "main.c",
                        source.name, "-lm"], check=True, capture_output=True, cwd=folder)
        for steps in (100, 200):
            out = source.parent / f"callgrind.{steps}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(program_path),
                            str(steps)], check=True, capture_output=True)
            counts.append(int(re.search(r"^summary: (\d+)", out.read_text(), re.M).group(1)))
    return (counts[1] - counts[0]) / 100
