"""Training and prediction as Dask tasks: the same members and maps as in one process, and safe when a worker dies."""

from __future__ import annotations

import os
import platform
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

distributed = pytest.importorskip("distributed")

from elit_utils import ensemble as ens  # noqa: E402
from elit_utils.simulate import dataset  # noqa: E402
from elit_utils.unet import UnetArchitecture  # noqa: E402

#: One torch thread per worker: a member's CPU arithmetic depends on its thread count (2 threads and 1
#: give different sums), so the serial reference runs with as many threads as each worker has.
THREADS_PER_WORKER = 1


@pytest.fixture(scope="module")
def client():
    """A 2-worker cluster of processes on this machine, shared by the tests of this file that kill no worker."""
    with (
        distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=THREADS_PER_WORKER, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as connected,
    ):
        yield connected


def _train(folder: Path, n_iterations: int = 2, **options: object) -> ens.Ensemble:
    train = dataset("source", n=4, seed=0, image_size_px=32, cache=False)
    config = ens.TrainingConfig(n_iterations=n_iterations, batch_size=2, swa_iterations=1)
    return ens.train_ensemble(train.images, train.atom_mask, folder, 2, 0.1, UnetArchitecture(nb_filters=4), config, progress=False, **options)


def _weights(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / f"member_{seed:04d}.safetensors"))


def test_members_trained_on_two_workers_equal_the_serial_run_bit_for_bit(client, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:  # the serial run with the workers' thread count (see THREADS_PER_WORKER)
        patch.setattr(ens.os, "cpu_count", lambda: THREADS_PER_WORKER)
        _train(tmp_path / "serial")
    on_workers = _train(tmp_path / "dask", client=client)
    assert on_workers.seeds == [0, 1]
    for seed in on_workers.seeds:
        serial, tasks = _weights(tmp_path / "serial", seed), _weights(tmp_path / "dask", seed)
        assert serial.keys() == tasks.keys()
        assert all(torch.equal(serial[name], tasks[name]) for name in serial), f"member {seed} differs from the serial run"
    assert ens.Ensemble.load(tmp_path / "dask").weights_sha256 == ens.Ensemble.load(tmp_path / "serial").weights_sha256


def test_a_worker_of_two_threads_trains_its_members_one_at_a_time_as_a_process_of_two_threads_would(tmp_path, monkeypatch):
    import json

    train = dataset("source", n=8, seed=0, image_size_px=64, cache=False)
    config = ens.TrainingConfig(n_iterations=12, batch_size=4, swa_iterations=2)

    def trained(folder: Path, **options: object) -> ens.Ensemble:
        return ens.train_ensemble(train.images, train.atom_mask, folder, 2, 0.1, UnetArchitecture(nb_filters=8), config, progress=False, **options)

    with monkeypatch.context() as patch:
        patch.setattr(ens.os, "cpu_count", lambda: 2)
        serial = trained(tmp_path / "serial")
    with (  # a worker of 2 threads gets both members at once: they must not share its threads
        distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as two_threads,
    ):
        on_worker = trained(tmp_path / "dask", client=two_threads)
    assert on_worker.weights_sha256 == serial.weights_sha256
    for folder in ("serial", "dask"):
        assert [json.loads((tmp_path / folder / f"member_{seed:04d}.json").read_text())["torch_threads"] for seed in (0, 1)] == [2, 2]


def test_finished_members_are_not_retrained_on_workers(client, tmp_path):
    folder = tmp_path / "model"
    first = _train(folder, client=client)
    (folder / "member_0001.json").unlink()  # as if the run had stopped while member 1 was being written
    stamp = (folder / "member_0000.safetensors").stat().st_mtime_ns
    resumed = _train(folder, client=client)
    assert (folder / "member_0000.safetensors").stat().st_mtime_ns == stamp
    assert resumed.weights_sha256 == first.weights_sha256


class _KillWorkerOnce(distributed.WorkerPlugin):
    """Kills the worker process that finishes training ``seed``, before it saves it, the first time only (a marker file says so)."""

    def __init__(self, seed: int, marker: str) -> None:
        self.seed, self.marker = seed, marker

    def setup(self, worker: object) -> None:
        real = ens._train_pack

        def train_then_die(images, masks, seeds, *args, **kwargs):
            result = real(images, masks, seeds, *args, **kwargs)
            if seeds == [self.seed] and not os.path.exists(self.marker):
                Path(self.marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        ens._train_pack = train_then_die


def test_a_worker_killed_mid_task_still_completes_the_ensemble(tmp_path):
    marker = tmp_path / "killed-once"
    with (
        distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(_KillWorkerOnce(seed=1, marker=str(marker)))
        trained = _train(tmp_path / "model", n_iterations=20, client=client)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert trained.seeds == [0, 1]
    assert ens.Ensemble.load(tmp_path / "model").n_members == 2  # every member written whole and recorded


def _frames(n: int) -> list[np.ndarray]:
    """``n`` source frames of two sizes (32 and 48 px), so that chunks mix shapes."""
    small = dataset("source", n=n, seed=7, image_size_px=32, cache=False).images
    large = dataset("source", n=n, seed=8, image_size_px=48, cache=False).images
    return [small[i] if i % 2 else large[i] for i in range(n)]


def _cached_ensembles() -> list[int]:
    return [id(loaded) for loaded in ens._LOADED_ON_WORKER.values()]


def test_predict_many_on_workers_equals_predict_frame_by_frame(client, tmp_path):
    trained = _train(tmp_path / "model")
    frames = _frames(5)
    on_workers = dict(trained.predict_many(frames, client=client, sampling_A_per_px=0.1, frames_per_task=2))
    assert sorted(on_workers) == list(range(5))
    for index, frame in enumerate(frames):
        here = trained.predict(frame, sampling_A_per_px=0.1)
        assert np.array_equal(on_workers[index].members, here.members), f"frame {index} differs from predict"
        assert np.array_equal(on_workers[index].mutual_information, here.mutual_information)
    loaded = client.run(_cached_ensembles)
    assert sum(len(ids) for ids in loaded.values()) >= 1
    dict(trained.predict_many(frames, client=client, sampling_A_per_px=0.1, frames_per_task=2))
    assert client.run(_cached_ensembles) == loaded, "a worker loaded the ensemble again"


def test_predict_many_without_a_client_is_predict_in_order(tmp_path):
    trained = _train(tmp_path / "model")
    frames = _frames(3)
    results = list(trained.predict_many(frames, sampling_A_per_px=[0.1, 0.1, 0.12]))
    assert [index for index, _ in results] == [0, 1, 2]
    assert np.array_equal(results[2][1].mean, trained.predict(frames[2], sampling_A_per_px=0.12).mean)
    with pytest.raises(ens.BadValueError, match="one per frame"):
        trained.predict_many(frames, sampling_A_per_px=[0.1, 0.1])


def test_the_package_imports_without_dask_and_never_loads_it_on_import():
    import subprocess
    import sys

    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    without = "import sys; sys.modules['distributed'] = sys.modules['dask'] = None; import elit_utils.ensemble, elit_utils.cli, elit_utils.distributed"
    assert subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, env=environment).returncode == 0
    loaded = "import sys, elit_utils.ensemble, elit_utils.cli, elit_utils.distributed; print('dask' in sys.modules or 'distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, env=environment).stdout.strip() == "False"


def test_scheduler_specs():
    from elit_utils.distributed import parse_scheduler, threads_per_worker

    assert parse_scheduler("local:3") == ("local", 3) and parse_scheduler(" tcp://node7:8786 ") == ("address", "tcp://node7:8786")
    for bad in ("local:", "local:-1", "local:2.5", "node7:8786", "tcp://", ""):
        with pytest.raises(ens.BadValueError, match="--scheduler"):
            parse_scheduler(bad)
    assert threads_per_worker(3, 8) == 2 and threads_per_worker(16, 8) == 1


#: In a process started as Dask's nanny starts workers: 1 MiB blocks allocated, filled and freed, before, inside and after the block
#: (over glibc's 128 KiB mmap threshold, under the 4 MiB from which numpy asks for huge pages).
FAULTS_OF_1_MIB_BLOCKS = """
import resource
import numpy as np
from elit_utils.distributed import freed_memory_reused

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(2**18, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
with freed_memory_reused():
    faults()
    inside = faults()
print(before, inside, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="MALLOC_TRIM_THRESHOLD_ and mallopt are glibc's")
def test_freed_memory_is_reused_inside_tasks_on_a_worker_started_as_dask_starts_them():
    import resource  # POSIX only: imported here, so that the module is collected everywhere
    import subprocess
    import sys

    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "MALLOC_TRIM_THRESHOLD_": "65536"}
    run = subprocess.run([sys.executable, "-c", FAULTS_OF_1_MIB_BLOCKS], capture_output=True, text=True, env=environment, check=True)
    before, inside, after = map(int, run.stdout.split())
    block_pages = 2**20 // resource.getpagesize()
    assert before >= 10 * block_pages, f"each block should be mapped afresh under Dask's setting ({before} page faults for 20 blocks)"
    assert inside < block_pages, f"blocks should be reused inside freed_memory_reused ({inside} page faults for 20 blocks)"
    assert after >= 10 * block_pages, f"Dask's setting should be back after the block ({after} page faults for 20 blocks)"
