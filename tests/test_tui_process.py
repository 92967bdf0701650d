"""``open --worker process``: the studio's models in a child process. The frames equal the thread
worker's; the keys, recording and a new episode work in the app; a failure in the child (an exception, or
the process dying) is a notification and a truthful status; the child is reaped when the app quits, and
ends on its own when the app is killed. Each test starts one or two child processes (about 2 s each)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.hdf5 import read_recording
from mclstudio.recording.playback import LiveFeed
from mclstudio.recording.session import record_session
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.tui.app import StudioApp
from mclstudio.tui.cli import build_open_app
from mclstudio.tui.headless import settle, start_live, wait_until
from mclstudio.tui.messages import FrameReady
from mclstudio.tui.player import Player
from mclstudio.tui.process_player import ProcessPlayer

from cli_helpers import one_line_error, run_cli
from tui_helpers import notes, record_onto_a_full_disk, status
from planted_child import dying_child, full_disk_child, garbling_child, raising_child

ROOT = Path(__file__).resolve().parent.parent
MAMBA = str(ROOT / "checkpoints" / "mamba.pt")
TRANSFORMER = str(ROOT / "checkpoints" / "transformer.pt")
SIZE = (160, 50)
pytestmark = pytest.mark.timeout(120)


def gone(pid: int) -> bool:
    """The process has ended: no such process, or a zombie no one reaped yet (an orphan's, under init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False



def process_app(tmp_path: Path, child=None) -> StudioApp:
    """The studio on Mamba, 3 tasks x 2 shots, with the process worker; child: a planted child's main
    (tests/planted_child.py) instead of the real one."""
    app = build_open_app([MAMBA], tasks=3, shots=2, seed=0, device="cpu", record_dir=tmp_path,
                         show_timing=False, worker="process")
    if child is not None:
        app.player.target = child
    return app

def test_the_process_workers_frames_equal_the_thread_workers(one_thread: None) -> None:
    """One episode (3 tasks x 2 shots) of Mamba and the Transformer, streamed by each worker: the same
    frames, value for value (latency aside); the child is reaped when the player closes."""
    checkpoints = [load_checkpoint(MAMBA), load_checkpoint(TRANSFORMER)]
    spec = EpisodeSpec(tasks=3, train_shots=2, seed=3, num_codes=100)

    def episode(player: Player) -> list[FrameReady]:
        got: list = []
        generation = player.new_feed()
        for _ in range(3):
            player.faster()  # max speed
        player.toggle_play()
        if isinstance(player, ProcessPlayer):
            player.stream(LiveFeed(checkpoints, spec), generation, got.append)
            end = time.monotonic() + 60
            while len(got) < 6 and time.monotonic() < end:
                time.sleep(0.02)
            pid = player.process.pid
            player.close()
            assert player.process is None and reaped(pid)
        else:
            player.run(LiveFeed(checkpoints, spec), generation, got.append, lambda: len(got) >= 6)
        return got[:6]

    threaded, in_process = episode(Player(1)), episode(ProcessPlayer(1))
    assert all(isinstance(m, FrameReady) for m in threaded + in_process), in_process
    rows_seen = 0
    for a, b in zip(threaded, in_process, strict=True):
        fa, fb = a.frame, b.frame
        assert (fa.episode, fa.step, fa.task, fa.label, fa.episode_done) == (fb.episode, fb.step, fb.task, fb.label,
                                                                              fb.episode_done)
        np.testing.assert_array_equal(fa.image, fb.image)
        for sa, sb in zip(fa.snapshots, fb.snapshots, strict=True):
            assert (sa.learner, sa.step, sa.accuracy, sa.state_bytes) == (sb.learner, sb.step, sb.accuracy,
                                                                          sb.state_bytes)
            np.testing.assert_array_equal(sa.predictions, sb.predictions)
            np.testing.assert_array_equal(sa.layer_norms, sb.layer_norms)
            np.testing.assert_array_equal(sa.accuracy_matrix, sb.accuracy_matrix)
            assert (sa.rows is None) == (sb.rows is None)
            if sa.rows is not None:
                np.testing.assert_array_equal(sa.rows, sb.rows)
                np.testing.assert_array_equal(sa.same_class, sb.same_class)
                rows_seen += 1
    assert rows_seen == 6  # both learners' rows at the three task ends


def test_the_child_loads_the_apps_checkpoints_with_their_adapters_and_settings(tmp_path: Path) -> None:
    """FeedRequest (what the child gets, pickled) rebuilds the app's learners: the same checkpoints, each
    adapter on the same copy (here the second of two Mambas), the same device, precision and fused step; a
    checkpoint replaced on disk since the app loaded it is refused."""
    import pickle
    import shutil

    import torch

    from mclstudio.store.adapters import load_learners
    from mclstudio.store.checkpoint import CheckpointError
    from mclstudio.tui.process_player import FeedRequest

    # the shipped adapters were trained on the previous checkpoints (checkpoints/previous/)
    adapter = str(ROOT / "checkpoints" / "previous" / "adapters" / "mamba-omniglot-mini-noisy-r4.pt")
    MAMBA = str(ROOT / "checkpoints" / "previous" / "mamba.pt")
    copy = tmp_path / "mamba.pt"
    shutil.copyfile(MAMBA, copy)
    spec = EpisodeSpec(tasks=3, train_shots=2, seed=1, num_codes=100)
    apps = load_learners([TRANSFORMER, MAMBA, str(copy)], [adapter])
    apps.append(apps.pop(1))  # [T, copy, M+A]: given in this order, load_learners would adapt the copy instead
    feed = LiveFeed(apps, spec, "bf16", "off")
    request = pickle.loads(pickle.dumps(FeedRequest.of(feed)))
    assert (request.device, request.precision, request.fused_step, request.spec) == ("cpu", "bf16", "off", feed.spec)
    child = request.load()
    assert [c.name for c in child] == [c.name for c in apps]
    for mine, theirs in zip(apps, child):
        assert mine.adapter_sha256 == theirs.adapter_sha256
        for (name, a), (_, b) in zip(mine.learner.state_dict().items(), theirs.learner.state_dict().items()):
            assert torch.equal(a, b), name
    shutil.copyfile(TRANSFORMER, copy)  # another file where the app's checkpoint was
    with pytest.raises(CheckpointError, match="changed on disk since the studio loaded it"):
        request.load()


def test_the_app_with_a_model_process_steps_plays_records_and_reaps_it(tmp_path: Path) -> None:
    async def go() -> tuple[Path, int]:
        app = process_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("n", "right")
            await settle(pilot, 2)
            await pilot.pause(0.5)
            assert app.frames_received == 2  # paused: exactly the steps asked for
            assert "step 2/6" in str(app.screen.query_one("#example").content)
            pid = app.player.process.pid
            await pilot.press("r")
            path = app.controls.recording_to
            assert path is not None and "REC" in status(app)
            await pilot.press("plus", "plus", "plus", "space")  # max speed: the episode ends at step 6
            assert "playing" in status(app) and "speed max" in status(app)
            await wait_until(pilot, lambda: app.recorded_episodes >= 1)
            await pilot.press("space", "r")
            assert "recorded" in status(app) and "paused" in status(app)
            await pilot.pause(0.3)
            seen = app.frames_received
            await pilot.pause(0.5)
            assert app.frames_received == seen  # paused means no more steps
            # a new episode (what the picker asks for) replaces the old one, in the same child
            assert app.start_episode(EpisodeSpec(tasks=2, train_shots=2, seed=5, num_codes=100)) is None
            await pilot.press("n")
            await wait_until(pilot, lambda: app.frame is not None and app.frame.num_examples == 4)
            assert (app.frame.episode, app.frame.step) == (0, 0) and app.frames_received == seen + 1
            assert app.player.process.pid == pid
            await pilot.press("q")
        assert app.return_code == 0 and app.player.process is None
        return path, pid

    path, pid = asyncio.run(go())
    assert reaped(pid)
    rec = read_recording(path)
    ref = read_recording(record_session([load_checkpoint(MAMBA)], rec.episodes[0].spec, 1, tmp_path / "ref.h5"))
    a, b = rec.episodes[0].traces["mamba"], ref.episodes[0].traces["mamba"]
    assert (a.predictions_array() == b.predictions_array()).all()
    assert a.eval_steps == b.eval_steps and a.rows_steps == b.rows_steps
    np.testing.assert_array_equal(np.stack(a.rows), np.stack(b.rows))


def test_an_error_in_the_model_process_is_a_notification_and_a_paused_status(tmp_path: Path) -> None:
    async def go() -> int:
        app = process_app(tmp_path, raising_child)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("space")
            await wait_until(pilot, lambda: any(severity == "error" for severity, _ in notes(app)))
            assert ("error", "RuntimeError: CUDA error: an illegal memory access was encountered") in notes(app)
            await wait_until(pilot, lambda: status(app).startswith("[b]paused"))
            assert app.frames_received == 2
            pid = app.player.process.pid
            await pilot.press("q")
        assert app.return_code == 0
        return pid

    assert reaped(asyncio.run(go()))


def test_a_model_process_that_dies_is_reported_and_started_again(tmp_path: Path) -> None:
    async def go() -> None:
        app = process_app(tmp_path, dying_child)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("space")
            await wait_until(pilot, lambda: any(severity == "error" for severity, _ in notes(app)))
            assert ("error", "the model process stopped (exit code 3); open an episode to start it again") \
                in notes(app)
            await wait_until(pilot, lambda: status(app).startswith("[b]paused"))
            assert app.frames_received == 2
            assert app.start_episode(app.spec) is None  # a new episode starts a new child
            await pilot.press("n", "n")
            await wait_until(pilot, lambda: app.frames_received == 4)
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(go())


def test_an_event_the_app_cannot_read_ends_the_model_process_with_a_notification(tmp_path: Path) -> None:
    async def go() -> int:
        app = process_app(tmp_path, garbling_child)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await wait_until(pilot, lambda: app.player.process is not None)  # (started by the feed's worker)
            pid = app.player.process.pid
            await wait_until(pilot, lambda: any(severity == "error" for severity, _ in notes(app)))
            assert ("error", "the model process stopped (exit code -15): ValueError: not enough values to unpack "
                    "(expected 5, got 2); open an episode to start it again") in notes(app), notes(app)
            assert status(app).startswith("[b]paused") and gone(pid)
            await pilot.press("q")
        assert app.return_code == 0
        return pid

    assert reaped(asyncio.run(go()))


def test_a_disk_error_in_the_model_process_stops_the_recording_not_the_stream(tmp_path: Path) -> None:
    async def go() -> None:
        app = process_app(tmp_path, full_disk_child)
        async with app.run_test(size=SIZE) as pilot:
            await record_onto_a_full_disk(app, pilot)
        assert app.return_code == 0

    asyncio.run(go())


CHILD_OF_A_KILLED_APP = f"""
import sys, time
from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.playback import LiveFeed
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.tui.process_player import ProcessPlayer

if __name__ == "__main__":
    player = ProcessPlayer(1)
    got = []
    player.stream(LiveFeed([load_checkpoint({MAMBA!r})], EpisodeSpec(tasks=3, train_shots=2, num_codes=100)),
                  player.new_feed(), got.append)
    player.toggle_play()
    while not got:
        time.sleep(0.02)
    player.toggle_play()  # paused: the child sends nothing, so only the closed pipe can tell it the app is gone
    print(player.process.pid, flush=True)
    time.sleep(120)
"""


def test_the_model_process_ends_when_the_app_is_killed(tmp_path: Path) -> None:
    """kill -9 of the app (nothing of it runs any more): its model process sees the command pipe close and
    ends by itself, instead of streaming on as an orphan."""
    script = tmp_path / "app.py"
    script.write_text(CHILD_OF_A_KILLED_APP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    app = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(app.stdout.readline())
        assert not gone(child)
        app.send_signal(signal.SIGKILL)
        app.wait()
        end = time.monotonic() + 20
        while not gone(child) and time.monotonic() < end:
            time.sleep(0.05)
        assert gone(child)
    finally:
        app.kill()
        app.wait()


def test_a_bad_worker_is_refused(capsys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="worker must be one of thread, process"):
        build_open_app([MAMBA], device="cpu", record_dir=tmp_path, worker="fiber")
    code, _, err = run_cli(capsys, "open", MAMBA, "--worker", "fiber")
    one_line_error(code, err, "--worker", exit_code=2)


def test_open_runs_the_models_in_a_process_by_default(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`open` without --worker asks for the process worker (the faster one on the CPU, README), and
    build_open_app builds a ProcessPlayer for it."""
    import mclstudio.tui.cli as tui_cli

    asked: dict = {}
    monkeypatch.setattr(tui_cli, "open_studio", lambda checkpoints, **kw: asked.update(kw))
    code, _, err = run_cli(capsys, "open", MAMBA, "--record-dir", tmp_path)
    assert code == 0 and asked["worker"] == "process", err
    run_cli(capsys, "open", MAMBA, "--record-dir", tmp_path, "--worker", "thread")
    assert asked["worker"] == "thread"
    app = build_open_app([MAMBA], device="cpu", record_dir=tmp_path, worker="process")
    assert type(app.player) is ProcessPlayer and app.player.process is None  # started with the first episode
    assert type(build_open_app([MAMBA], device="cpu", record_dir=tmp_path).player) is Player
