"""The same graph on dask.distributed: light graphs, identical results, a lost worker."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
import zarr

import bigstack
from bigstack import _tasks, synthetic

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cluster")
    return synthetic.make_frames(directory, n_frames=10, shape=(160, 120), seed=40,
                                 motion=synthetic.Motion(subpixel=True),
                                 stars=synthetic.Stars(ref_isolation=40))


def _cluster(**kwargs):
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", **kwargs)


def test_graph_for_1000_frames_is_light(tmp_path):
    data = np.zeros((16, 16), np.uint16)
    paths = []
    for i in range(1000):
        path = tmp_path / f"f{i:04d}.fit"
        if i == 0:
            from astropy.io import fits

            fits.PrimaryHDU(data).writeto(path)
        else:
            os.link(paths[0], path)
        paths.append(path)
    cube = bigstack.open_frames(paths)
    shifts = np.zeros((1000, 2))
    lazy = bigstack.stack(cube, shifts)
    graph = dict(lazy["stack"].data.__dask_graph__())
    assert len(pickle.dumps(graph)) < 2 * 2**20  # paths and shifts, no pixels
    found = bigstack.find_shifts(cube, star_pos=[8, 8], search=8, compute=False)
    assert len(pickle.dumps(dict(found["shift"].data.__dask_graph__()))) < 2 * 2**20


def test_store_tasks_return_counts_not_pixels(night, tmp_path, monkeypatch):
    results = []
    real = _tasks.compute
    monkeypatch.setattr(_tasks, "compute",
                        lambda tasks, progress: results.extend(real(tasks, progress)))
    bigstack.stack(bigstack.open_frames(night.paths), night.shifts, store=tmp_path / "s.zarr")
    assert results and all(isinstance(r, int) for r in results)


def test_local_cluster_equals_threads_bit_for_bit(night, tmp_path):
    cube = bigstack.open_frames(night.paths)
    threaded_shifts = bigstack.find_shifts(cube, star_pos=night.ref_star, search=40)
    threaded = bigstack.stack(cube, threaded_shifts, subpixel="bilinear", memory="256kB",
                              store=tmp_path / "threads.zarr")
    with _cluster() as cluster, distributed.Client(cluster):
        shifts = bigstack.find_shifts(cube, star_pos=night.ref_star, search=40)
        remote = bigstack.stack(cube, shifts, subpixel="bilinear", memory="256kB",
                                store=tmp_path / "cluster.zarr", progress=True)
        np.testing.assert_array_equal(shifts["shift"].values, threaded_shifts["shift"].values)
        assert remote["stack"].values.tobytes() == threaded["stack"].values.tobytes()
        lazy = bigstack.stack(cube, shifts, subpixel="bilinear", memory="256kB").compute()
    assert lazy["stack"].values.tobytes() == threaded["stack"].values.tobytes()


def test_a_lost_worker_does_not_change_the_result(night, tmp_path):
    cube = bigstack.open_frames(night.paths)
    expected = bigstack.stack(cube, night.shifts, memory="64kB").compute()
    store = tmp_path / "lost.zarr"
    with _cluster() as cluster, distributed.Client(cluster) as client:
        def slow_tiles():
            from bigstack import _combine as combine

            real = combine.combine_tile

            def slow(*args, **kwargs):
                time.sleep(0.3)
                return real(*args, **kwargs)

            combine.combine_tile = slow

        client.run(slow_tiles)
        pids = list(client.run(os.getpid).values())
        errors = []
        runner = threading.Thread(target=lambda: _run(cube, night.shifts, store, errors))
        runner.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                done = zarr.open_group(store, mode="r", use_consolidated=False)[
                    "_bigstack"]["tiles_done"][:]
            except Exception:  # the store is still being created
                done = np.zeros(1)
            if done.sum() >= 2:
                break
            time.sleep(0.05)
        assert done.sum() < len(done)  # killed in the middle of the run
        os.kill(pids[0], signal.SIGKILL)
        runner.join(120)
    assert not errors, errors
    got = zarr.open_group(store, mode="r")
    assert got.attrs["complete"] is True
    np.testing.assert_array_equal(got["stack"][:], expected["stack"].values)
    np.testing.assert_array_equal(got["coverage"][:], expected["coverage"].values)


def _run(cube, shifts, store, errors):
    try:
        bigstack.stack(cube, shifts, store=store, memory="64kB")
    except Exception as err:  # reported by the test
        errors.append(err)


def test_rotated_frames_on_a_cluster_equal_threads_bit_for_bit(tmp_path):
    truth = synthetic.make_case("meridian_flip", tmp_path / "flip", n_frames=6,
                                shape=(160, 120), seed=41)
    cube = bigstack.open_frames(truth.paths)
    threaded = bigstack.stack(cube, truth.transforms, subpixel="lanczos3", memory="256kB",
                              store=tmp_path / "threads.zarr")
    with _cluster() as cluster, distributed.Client(cluster):
        remote = bigstack.stack(cube, truth.transforms, subpixel="lanczos3", memory="256kB",
                                store=tmp_path / "cluster.zarr")
    assert remote["stack"].values.tobytes() == threaded["stack"].values.tobytes()
    np.testing.assert_array_equal(remote["coverage"].values, threaded["coverage"].values)
    assert int(threaded["coverage"].max()) == 6  # the flipped frames are stacked, not dropped
