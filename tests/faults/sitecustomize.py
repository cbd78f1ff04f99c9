"""Fault injection for the sweep tests, loaded by every Python process that has this folder on PYTHONPATH.

With ``SEGSWEEP_TEST_FAULT_DIR`` set, the first trial process to start training epoch 2 raises RuntimeError in
``training_step``, once per sweep (a marker file in that folder records it): what an out-of-memory error or a bug
does to one trial.

With ``SEGSWEEP_TEST_BARRIER_DIR`` set and that folder there, a trial process's first training step waits until
``SEGSWEEP_TEST_BARRIER_N`` trial processes have reached theirs (each leaves a file named by its pid; at most 120 s):
trials that must run side by side do, however slowly the machine starts their processes (Tune otherwise hands the
next trial to a finished trial's process when that is ready first). No folder: no waiting.

Nothing in the product code knows about either; they only patch ``segcore.model`` once imported.
"""
import importlib.abc
import importlib.machinery
import os
import sys

FAULT_DIR = os.environ.get("SEGSWEEP_TEST_FAULT_DIR")
BARRIER_DIR = os.environ.get("SEGSWEEP_TEST_BARRIER_DIR")
BARRIER_N = int(os.environ.get("SEGSWEEP_TEST_BARRIER_N", "2"))
MESSAGE = "CUDA out of memory (injected by the test suite)"


def _wait_at_barrier() -> None:
    import time

    if not os.path.isdir(BARRIER_DIR):
        return
    mine = os.path.join(BARRIER_DIR, str(os.getpid()))
    if os.path.exists(mine):  # this process waited already (a reused actor's next trial)
        return
    open(mine, "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(BARRIER_DIR)) < BARRIER_N and time.monotonic() < deadline:
        time.sleep(0.1)


def _patch(module) -> None:
    original = module.SegmentationModule.training_step

    def training_step(self, batch, batch_idx):
        if BARRIER_DIR:
            _wait_at_barrier()
        if FAULT_DIR and self.current_epoch == 1:
            try:
                fd = os.open(os.path.join(FAULT_DIR, "raised"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                raise RuntimeError(MESSAGE)
        return original(self, batch, batch_idx)

    module.SegmentationModule.training_step = training_step


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "segcore.model":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if FAULT_DIR or BARRIER_DIR:
    sys.meta_path.insert(0, _Finder())
