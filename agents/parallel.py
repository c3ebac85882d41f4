"""Running a list of evaluation jobs: in this process, on a local process pool, or on Ray.

``run_jobs(fn, jobs, on_result, on_error, backend=...)`` calls ``fn(job)`` for every job and hands
each outcome to the caller the moment it is known, so the caller can write it to disk at once
(`agents.io.RowLog`); an interrupted sweep loses at most the jobs that were running.

Failures stay contained:

- a job that raises is reported to ``on_error`` with the exception text; the others go on;
- ``local``: a worker process that dies (segfault, ``os._exit``, out of memory) breaks the
  process pool; the jobs that were running in it are then rerun one at a time, each in a fresh
  single-worker pool, so only the job that kills its worker is reported as an error, and the
  pool is restarted for the rest;
- ``ray``: Ray retries a task whose worker died once, then reports it as an error.

``fn`` and the jobs must be picklable (``fn`` a module-level function). Workers run torch with
one thread each, so N workers use N cores. On a Ray cluster (``address``) every node needs
liquid-drones installed (``pip install 'liquid-drones[ray]'``); evaluation jobs carry their run's
files, so the nodes need no shared filesystem.
"""

from __future__ import annotations

import multiprocessing
import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from agents.progress import Progress

BACKENDS = ("local", "ray", "serial")

Job = TypeVar("Job")
Result = TypeVar("Result")


def describe(error: BaseException) -> str:
    """One line naming an exception: ``"ValueError: action contains NaN"``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_backend(backend: str, address: str | None = None) -> None:
    """Fail before any work starts if ``backend`` is unknown or not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise ValueError(f"--address {address} is a Ray cluster address; it needs --backend ray")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("backend 'ray' needs Ray: pip install 'liquid-drones[ray]'") from None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_jobs(
    fn: Callable[[Job], Result],
    jobs: Sequence[Job],
    on_result: Callable[[Job, Result], None],
    on_error: Callable[[Job, str], None],
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    size: Callable[[Job], int] = lambda job: 1,
    desc: str = "jobs",
    unit: str = "job",
) -> None:
    """Run ``fn(job)`` for every job; report each outcome as soon as it is known.

    :param backend: ``local`` (process pool of ``workers``), ``ray`` (a local Ray instance with
        ``workers`` CPUs, or the cluster at ``address``) or ``serial`` (this process, one job after
        the other: no protection against a job that kills the process)
    :param size: the job's weight in the progress bar (e.g. its number of episodes)
    """
    check_backend(backend, address)
    workers = workers or default_workers()
    bar = Progress(sum(size(job) for job in jobs), desc, unit)

    def report(index: int, result: Any, error: str | None) -> None:
        if error is None:
            on_result(jobs[index], result)
        else:
            on_error(jobs[index], error)
        bar.update(size(jobs[index]))

    try:
        if backend == "serial" or not jobs:
            for index, job in enumerate(jobs):
                try:
                    result = fn(job)
                except Exception as error:  # a job's failure must not stop the others
                    report(index, None, describe(error))
                else:
                    report(index, result, None)
        elif backend == "local":
            _run_local(fn, jobs, report, min(workers, len(jobs)))
        else:
            _run_ray(fn, jobs, report, workers, address)
    finally:
        bar.close()


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to end this worker when its parent dies (Linux: PR_SET_PDEATHSIG), so that
    killing a sweep does not leave its pool workers running; a worker whose parent died before
    this was set ends at once."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _init_worker(parent: int) -> None:
    """One torch/BLAS thread per worker process (set before torch is imported by the first job);
    the worker dies with its parent (pid ``parent``)."""
    _die_with_parent(parent)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: a fresh interpreter per worker (fork after torch/pybullet set up threads is unsafe).
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))


def _run_local(fn: Callable, jobs: Sequence[Any], report: Callable, workers: int) -> None:
    pending = deque(range(len(jobs)))
    while pending:
        with _pool(workers) as pool:
            suspects = _drain(pool, fn, jobs, pending, report, workers)
        for index in suspects:  # alone, so a worker death points at exactly one job
            with _pool(1) as solo:
                try:
                    result = solo.submit(fn, jobs[index]).result()
                except BrokenProcessPool:
                    report(index, None, "worker process died while running this job "
                                        "(crash, os._exit or out of memory)")
                except Exception as error:
                    report(index, None, describe(error))
                else:
                    report(index, result, None)


def _drain(pool: ProcessPoolExecutor, fn: Callable, jobs: Sequence[Any], pending: deque[int],
           report: Callable, workers: int) -> list[int]:
    """Run pending jobs with at most ``workers`` in flight (so the running ones are known);
    return the jobs that were running when the pool broke (empty if it never did)."""
    running: dict[Future, int] = {}
    while pending or running:
        while pending and len(running) < workers:
            index = pending.popleft()
            running[pool.submit(fn, jobs[index])] = index
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        broken = []
        for future in done:
            index = running.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                broken.append(index)
            except Exception as error:
                report(index, None, describe(error))
            else:
                report(index, result, None)
        if broken:
            return broken + list(running.values())
    return []


@contextlib.contextmanager
def ray_session(workers: int, address: str | None = None) -> Iterator[None]:
    """Ray connected for the block: the cluster at ``address``, or a local instance with ``workers``
    CPUs; one already connected is used as it is and left running. A caller that runs several
    sweeps (a study) holds one session around them all, so Ray starts once."""
    import ray

    started = not ray.is_initialized()
    if started:
        settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **settings)
        else:  # a local instance whose workers import the same code as this process
            env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
            ray.init(num_cpus=workers, runtime_env={"env_vars": env}, **settings)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_ray(fn: Callable, jobs: Sequence[Any], report: Callable, workers: int,
             address: str | None) -> None:
    import ray

    with ray_session(workers, address):
        remote = ray.remote(num_cpus=1, max_retries=1)(fn)
        refs = {remote.remote(job): index for index, job in enumerate(jobs)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                index = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # RayTaskError wraps the job's own exception
                    report(index, None, describe(getattr(error, "cause", None) or error))
                else:
                    report(index, result, None)
