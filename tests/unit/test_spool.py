"""The inference log's disk spool on its own: order, acknowledgement, torn frames, the cap,
and adoption of a spool an earlier process left (real files, no database)."""

from __future__ import annotations

import os
import random
import struct
import threading
import time
import zlib
from collections import Counter

import pytest

from serving.log_writer import keep_synced
from serving.spool import _HEADER_BYTES as HEADER
from serving.spool import Spool, move_unheld


def payloads(spool: Spool, timeout: float = 0.05, max_rows: int = 10_000) -> list[bytes]:
    out = []
    while frames := spool.read(max_rows, timeout):
        out += [f.payload for f in frames]
        spool.ack(frames)
    return out


def segment_files(root) -> list:
    return sorted(root.rglob("*.seg"))


def left_by_a_dead_writer(root, sent: list[bytes], rows: int = 1):
    """The one segment a killed writer left under ``root``, holding ``sent``, synced."""
    dead = Spool(root, max_bytes=1 << 20)
    for payload in sent:
        dead.append(payload, rows=rows)
    dead.sync()
    dead.release()  # what the kernel does when the process dies: the lock goes, the files stay
    (segment,) = segment_files(root)
    return segment


def flip(segment, at: int) -> None:
    """A flipped bit at byte ``at`` of the file (negative: from its end)."""
    data = bytearray(segment.read_bytes())
    data[at] ^= 0xFF
    segment.write_bytes(bytes(data))


def test_frames_come_back_in_order_and_committed_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    sent = [f"frame-{i}".encode() * 5 for i in range(30)]
    for payload in sent:
        assert spool.append(payload, rows=2)
    assert len(segment_files(tmp_path)) > 5  # rolled over at 100 bytes
    frames = spool.read(10, timeout=0.1)
    assert [f.payload for f in frames] == sent[:5] and sum(f.rows for f in frames) == 10
    spool.ack(frames)
    assert payloads(spool) == sent[5:]
    assert len(segment_files(tmp_path)) == 1  # only the open tail segment stays
    spool.close()
    assert segment_files(tmp_path) == []  # an empty spool leaves nothing behind


def test_a_sealed_spool_stops_its_waiting_reader_once_it_has_read_everything(tmp_path):
    """A writer shutting down must not wait out its flush interval (here an hour) for frames
    that will never come."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"last", rows=1)
    first = spool.read(10, timeout=3600)
    assert [f.payload for f in first] == [b"last"]
    spool.ack(first)
    reads: list = []

    def read_in_background() -> threading.Thread:
        reader = threading.Thread(target=lambda: reads.append(spool.read(10, timeout=3600)), daemon=True)
        reader.start()
        return reader

    waiting = read_in_background()
    spool.seal()
    waiting.join(60)
    read_in_background().join(60)  # a read after the seal does not wait either
    assert reads == [[], []], "a reader still waits for frames after the spool was sealed"
    spool.close()


def open_at_once(root, writers: int) -> tuple[list[Spool], list[Exception]]:
    """``writers`` spools opened on ``root`` by threads released at the same moment."""
    start = threading.Barrier(writers)
    spools: list[Spool] = []
    errors: list[Exception] = []

    def open_spool() -> None:
        start.wait()
        try:
            spools.append(Spool(root, max_bytes=1 << 20))
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_spool) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return spools, errors


def test_writers_starting_at_the_same_moment_never_take_each_others_directory(tmp_path):
    """Two API workers start their writers together: before, one locked the other's directory
    between its creation and its lock (about one start in five here), adopted it, and the
    other's writer died on start."""
    for trial in range(100):
        root = tmp_path / str(trial)
        root.mkdir()
        spools, errors = open_at_once(root, 4)
        assert (errors, [s.adopted for s in spools]) == ([], [0, 0, 0, 0]), f"trial {trial}"
        for spool in spools:
            spool.close()


def test_a_spool_left_by_a_dead_process_is_adopted_and_replayed_first(tmp_path):
    dead = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        dead.append(f"old-{i}".encode(), rows=1)
    dead.sync()
    dead.release()  # what the kernel does when the process dies: the lock goes, the files stay
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopted == 1 and spool.adopted_bytes > 0
    spool.append(b"new", rows=1)
    frames = spool.read(100, timeout=0.1)
    assert [f.payload for f in frames][:3] == [b"old-0", b"old-1", b"old-2"]
    assert all(f.directory != spool.own for f in frames[:3])
    spool.ack(frames)
    assert payloads(spool) == ([] if len(frames) == 4 else [b"new"])
    assert spool.adopted == 0 and [p for p in tmp_path.iterdir() if p.is_dir()] == [spool.own]


def test_a_live_spool_is_never_adopted(tmp_path):
    first = Spool(tmp_path, max_bytes=1 << 20)
    first.append(b"mine", rows=1)
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert second.adopted == 0 and payloads(second) == []
    assert payloads(first) == [b"mine"]


def test_a_torn_last_frame_is_skipped_and_counted(tmp_path):
    segment = left_by_a_dead_writer(tmp_path, [f"good-{i}".encode() * 10 for i in range(4)])
    with open(segment, "r+b") as handle:  # power cut in the middle of the last write
        handle.truncate(os.path.getsize(segment) - 7)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [f"good-{i}".encode() * 10 for i in range(3)]
    assert spool.torn_frames == 1


def test_a_corrupted_frame_fails_its_checksum(tmp_path):
    segment = left_by_a_dead_writer(tmp_path, [b"a" * 50, b"b" * 50])
    flip(segment, -3)  # in the last payload
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [b"a" * 50] and spool.torn_frames == 1


def test_past_the_cap_appends_are_refused_and_room_comes_back_after_commit(tmp_path):
    spool = Spool(tmp_path, max_bytes=600, segment_bytes=200)
    accepted = [spool.append(b"x" * 90, rows=1) for _ in range(10)]
    assert accepted.count(True) == 5 and accepted[5:] == [False] * 5
    assert spool.bytes <= 600
    payloads(spool)
    assert spool.append(b"y" * 90, rows=1)  # committed segments were deleted: room again


def test_a_cap_smaller_than_a_segment_never_fills_with_committed_rows(tmp_path):
    """A 1 MiB cap (the smallest the settings take) under 8 MiB segments: the tail segment's
    committed frames held the cap and every later append was refused while the database was fine."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(300):  # 3 MB through a 1 MiB spool, each frame committed as it comes
        assert spool.append(b"x" * 10_000, rows=1), i
        assert payloads(spool) == [b"x" * 10_000]
    assert spool.bytes <= 1 << 20
    spool.close()


def test_a_disk_that_refuses_a_write_loses_that_frame_only(tmp_path, monkeypatch):
    """A full disk (ENOSPC) mid-frame: the frame is refused and cut off, later frames still read."""
    import errno

    import serving.spool as spool_module

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"before", rows=1)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, data[:5])  # the disk took a few bytes, then was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    assert not spool.append(b"lost-to-a-full-disk", rows=1)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    assert spool.append(b"after", rows=1)
    assert payloads(spool) == [b"before", b"after"] and spool.torn_frames == 0


def test_a_failed_write_that_cannot_be_cut_off_loses_no_later_frame(tmp_path, monkeypatch):
    """The cut-off failed too: frames appended after the junk were published at the old end
    and read as torn, though reported spooled. They go to a new segment now."""
    import errno

    import serving.spool as spool_module

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"before", rows=1)
    real_write, real_truncate = os.write, os.ftruncate

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    def refused(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    monkeypatch.setattr(spool_module.os, "ftruncate", refused)
    assert not spool.append(b"lost-to-a-full-disk", rows=1)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    monkeypatch.setattr(spool_module.os, "ftruncate", real_truncate)
    assert spool.append(b"after", rows=1) and spool.append(b"and-after", rows=1)
    assert payloads(spool) == [b"before", b"after", b"and-after"] and spool.torn_frames == 0
    assert spool.bytes == sum(f.stat().st_size for f in segment_files(tmp_path))  # the junk counted while on disk


def test_a_failed_write_right_after_a_roll_loses_no_earlier_frame(tmp_path, monkeypatch):
    """The roll moved the tail to a new, empty segment; the frames of the one before must still
    read whole, not as torn (they were reported spooled: losing them would go uncounted)."""
    import errno

    import serving.spool as spool_module

    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    first = [b"a" * 30, b"b" * 30]  # 42 bytes each with the header: a third one rolls over
    for payload in first:
        assert spool.append(payload, rows=1)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    assert not spool.append(b"c" * 30, rows=1)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    assert payloads(spool) == first and spool.torn_frames == 0
    assert spool.append(b"d" * 30, rows=1)
    assert payloads(spool) == [b"d" * 30]


def test_a_segment_that_cannot_be_opened_is_retried_at_the_next_append(tmp_path, monkeypatch):
    """Out of descriptors or inodes when rolling over: that frame is refused, the spool goes on."""
    import errno

    import serving.spool as spool_module

    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    assert spool.append(b"a" * 30, rows=1) and spool.append(b"b" * 30, rows=1)
    real_open = os.open

    def no_descriptors(*args, **kwargs) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(spool_module.os, "open", no_descriptors)
    assert not spool.append(b"c" * 30, rows=1)
    monkeypatch.setattr(spool_module.os, "open", real_open)
    assert spool.append(b"d" * 30, rows=1)
    assert payloads(spool) == [b"a" * 30, b"b" * 30, b"d" * 30] and spool.torn_frames == 0
    spool.close()


def test_zeroed_blocks_after_a_crash_are_torn_not_empty_frames(tmp_path):
    segment = left_by_a_dead_writer(tmp_path, [b"good" * 10])
    with open(segment, "ab") as handle:  # a file system that exposes unwritten extents as zeros
        handle.write(bytes(4096))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [b"good" * 10] and spool.torn_frames == 1


def test_the_latest_frames_are_synced_within_the_interval_with_no_read_and_no_append_after_them(tmp_path,
                                                                                                  monkeypatch):
    """The loader synced when it read, and appends when one was due: the last frames of a burst,
    with the loader inside a database statement that neither ended nor failed (a lock), waited
    for that statement to return. Nothing appended since the last fsync: no fsync."""
    import serving.spool as spool_module

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for _ in range(3):
        spool.append(b"x" * 10, rows=1)  # nobody reads
    assert synced == []
    done = threading.Event()
    syncer = threading.Thread(target=keep_synced, args=(spool, 0.05, done))
    syncer.start()
    try:
        deadline = time.monotonic() + 5
        while not synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(synced) == 1  # no further append: one fsync for the three
        time.sleep(0.3)
        assert len(synced) == 1
    finally:
        done.set()
        syncer.join()
        spool.close()


def test_a_spool_left_after_start_is_adopted_and_replayed_before_the_rest_of_ours(tmp_path):
    """A writer that outlives its API worker (draining while the database is away) exits after
    the replacement's writer started: the running writer takes its folder over at its next
    look, replays it before its own later frames, and reads none of its own twice."""
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=40)  # two frames per segment
    old = Spool(tmp_path, max_bytes=1 << 20)  # still held: the old writer is draining
    for i in range(3):
        old.append(f"old-{i}".encode(), rows=1)
    spool.append(b"mine-0", rows=1)
    spool.append(b"mine-1", rows=1)
    first = spool.read(1, timeout=0.1)
    assert [f.payload for f in first] == [b"mine-0"]
    spool.ack(first)
    assert spool.adopt() == 0  # a live writer's folder is never taken
    old.sync()
    old.release()  # the old writer exits with its rows not loaded
    before = spool.bytes
    adopted = spool.adopt()
    assert adopted == sum(p.stat().st_size for p in segment_files(old.own)) and spool.bytes == before + adopted
    assert spool.adopted == 1 and spool.adopt() == 0  # taken once
    spool.append(b"mine-2", rows=1)
    frames = []
    while batch := spool.read(10_000, timeout=0.05):
        assert len({f.directory for f in batch}) == 1  # one read, one folder: the loader tells replays apart
        frames += batch
        spool.ack(batch)
    assert [f.payload for f in frames] == [b"old-0", b"old-1", b"old-2", b"mine-1", b"mine-2"]
    assert spool.adopted == 0 and not old.own.exists()
    assert spool.bytes == sum(p.stat().st_size for p in segment_files(tmp_path))
    spool.close()
    assert segment_files(tmp_path) == []


def test_a_folder_left_behind_is_taken_over_only_when_it_fits_under_the_cap(tmp_path):
    """Its bytes count against our cap: taking it over regardless would refuse our own live rows."""
    from serving.spool import _try_lock

    mine, theirs = 18 + HEADER, 10 + HEADER  # the bytes of one frame of each
    cap = 8 * theirs + 2 * mine  # room for theirs beside two of ours, not three
    spool = Spool(tmp_path, max_bytes=cap, segment_bytes=mine)  # one frame per segment
    old = Spool(tmp_path, max_bytes=1 << 20)
    for _ in range(8):
        old.append(b"o" * 10, rows=1)
    old.release()
    for i in range(3):
        assert spool.append(f"mine-{i}".encode() * 3, rows=1)
    assert spool.adopt() == 0  # 3 of ours + 8 of theirs > the cap
    fd = _try_lock(old.own)  # left unlocked, for another writer or a later look
    assert fd is not None
    os.close(fd)
    spool.ack(spool.read(2, timeout=0.05))  # two of our segments committed and deleted
    assert spool.adopt() == 8 * theirs and spool.bytes == mine + 8 * theirs
    assert [f.payload for f in spool.read(100, timeout=0.05)] == [b"o" * 10] * 8


def test_our_committed_tail_leaves_room_for_a_folder_left_behind(tmp_path):
    """The tail segment stays on disk until it rolls, committed or not: counted as ours, it
    kept a folder near the cap waiting for the next restart."""
    spool = Spool(tmp_path, max_bytes=1000)
    old = Spool(tmp_path, max_bytes=1 << 20)
    old.append(b"o" * (900 - HEADER), rows=1)  # a 900-byte frame
    old.release()
    spool.append(b"m" * (200 - HEADER), rows=1)  # 200 bytes in our tail
    assert spool.adopt() == 0  # 200 + 900 > 1000: our rows are not committed yet
    spool.ack(spool.read(10, timeout=0.05))
    assert spool.adopt() == 900 and [f.payload for f in spool.read(10, timeout=0.05)] == [b"o" * (900 - HEADER)]


def test_a_folder_taken_over_beside_our_committed_tail_never_refuses_our_live_rows(tmp_path):
    """adopt() counted the tail's committed frames as room, append() as used: after a takeover
    the spool sat over its cap and refused live rows until the replay freed room."""
    spool = Spool(tmp_path, max_bytes=1000)
    old = Spool(tmp_path, max_bytes=1 << 20)
    old.append(b"o" * (700 - HEADER), rows=1)  # a 700-byte frame
    old.release()
    spool.append(b"m" * (250 - HEADER), rows=1)
    spool.ack(spool.read(10, timeout=0.05))  # committed, still in our tail segment
    assert spool.adopt() == 700  # 250 committed + 700 > 1000 on disk, but only 700 to keep
    assert spool.append(b"n" * (250 - HEADER), rows=1)  # was refused: "spool is full"
    assert [f.payload for f in spool.read(10, timeout=0.05)][:1] == [b"o" * (700 - HEADER)]


def test_a_disk_error_half_way_through_a_read_loses_no_frame(tmp_path, monkeypatch):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append(f"f{i}".encode(), rows=1)
    real, calls = Spool._read_one, []

    def second_fails(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(self, *args)

    monkeypatch.setattr(Spool, "_read_one", second_fails)
    try:
        spool.read(10, timeout=0.05)
    except OSError:
        pass
    else:
        raise AssertionError("the disk error was swallowed")
    assert payloads(spool) == [b"f0", b"f1", b"f2"]  # f0, read before the error, comes again


def test_a_segment_the_disk_cannot_read_costs_its_frames_only_never_the_loading(tmp_path, monkeypatch):
    """A bad block reported as EIO (not as wrong bytes) failed the same read at every retry:
    nothing loaded again, the live rows included, until the cap dropped them."""
    import builtins

    dead = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=64)
    for i in range(6):
        dead.append(f"old-{i}".encode() * 4, rows=1)
    dead.sync()
    dead.release()
    first = segment_files(tmp_path)[0]
    real_open = builtins.open

    def bad_block(file, *args, **kwargs):
        if str(file) == str(first):
            raise OSError(5, "Input/output error")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", bad_block)
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=64)
    spool.append(b"new", rows=1)
    read = payloads(spool)
    assert read[-1] == b"new" and len(read) >= 3 and spool.torn_frames == 1
    assert read[:-1] == [f"old-{i}".encode() * 4 for i in range(6 - (len(read) - 1), 6)]  # the readable ones, in order
    assert not first.exists() and spool.adopted == 0  # gone with the commits after it, the folder released


def test_a_passing_read_error_is_retried_and_costs_no_frame(tmp_path, monkeypatch):
    """Only a bad block's errors cost frames: too many open files is the moment's, and its
    frames come on the next read."""
    import builtins

    segment = left_by_a_dead_writer(tmp_path, [b"old-0", b"old-1"])
    real_open, failed = builtins.open, []

    def once(file, *args, **kwargs):
        if str(file) == str(segment) and not failed:
            failed.append(file)
            raise OSError(24, "Too many open files")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", once)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(OSError, match="Too many open files"):
        spool.read(10, timeout=0.05)
    assert payloads(spool) == [b"old-0", b"old-1"] and spool.torn_frames == 0


def test_a_folder_that_cannot_be_locked_is_left_alone_never_a_crash(tmp_path, caplog):
    (tmp_path / "not-ours").mkdir()
    (tmp_path / "not-ours" / "owner.lock").mkdir()  # as a folder of another user or a read-only mount fails
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopted == 0 and spool.adopt() == 0 and spool.adopt() == 0
    assert caplog.text.count("not-ours is not replayed: cannot lock it") == 1  # said once, not every 30 s
    assert spool.append(b"mine", rows=1) and payloads(spool) == [b"mine"]


def test_an_idle_writer_that_replayed_a_folder_leaves_nothing_to_replay_again(tmp_path):
    """Before, a folder taken over was let go of only at a later commit of our own: a writer
    with no traffic after the replay kept it at close, and with it our committed rows, which
    the next writer replayed."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"mine", rows=1)
    spool.ack(spool.read(10, timeout=0.05))
    old = Spool(tmp_path, max_bytes=1 << 20)
    old.append(b"old", rows=1)
    old.release()
    assert spool.adopt() > 0
    spool.ack(spool.read(10, timeout=0.05))
    spool.close()
    assert segment_files(tmp_path) == [] and Spool(tmp_path, max_bytes=1 << 20).adopted_bytes == 0


def test_a_writer_starting_after_a_crash_takes_over_only_what_fits_under_its_cap(tmp_path, caplog):
    """Every folder left by a restarted multi-worker API went to the first writer, which then
    held four caps' worth and refused every new row until they drained."""
    root = tmp_path / "spool"
    for i in range(5):  # five workers killed at once (each in a root of its own, or the next would adopt it)
        dead = Spool(tmp_path / str(i), max_bytes=1 << 20)
        dead.append(bytes([i]) * (1500 if i == 4 else 700), rows=1)  # 700 bytes and a header: one fits under 1000
        dead.release()
        move_unheld(tmp_path / str(i), root)
    first = Spool(root, max_bytes=1000)
    assert first.adopted == 1 and first.bytes == 700 + HEADER
    assert first.append(b"new", rows=1)  # our own live rows are not refused
    second = Spool(root, max_bytes=1000)
    assert second.adopted == 1
    payload = first.read(10, timeout=0.05)[0].payload
    assert len(payload) == 700 and payload != second.read(10, timeout=0.05)[0].payload
    # the one left under a larger cap: no writer of 1000 bytes can take it, each says so once
    assert caplog.text.count("is larger than the cap, 1000 bytes") == 2
    first.ack(first.read(10, timeout=0.05))
    assert first.adopt() == 700 + HEADER  # room again: the next folder left behind


def test_a_corrupt_frame_in_the_middle_loses_only_its_own_rows(tmp_path):
    """A bad block in frame 3 of 5 skipped the rest of the segment: frames 4 and 5, reported
    spooled, were never replayed nor counted."""
    sent = [bytes([65 + i]) * 40 for i in range(5)]
    segment = left_by_a_dead_writer(tmp_path, sent, rows=10)
    flip(segment, 2 * (HEADER + 40) + HEADER + 5)  # inside the third frame's payload
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [sent[0], sent[1], sent[3], sent[4]] and spool.torn_frames == 1
    assert spool.corrupt_rows == 10  # reported spooled, now lost: counted as dropped


def test_a_damaged_frame_length_in_the_middle_costs_that_frame_only(tmp_path):
    """A bad block in frame 3's length lost the rest of its segment (up to 8 MiB of rows),
    counted only as one torn frame: the frames after it are found again by their headers."""
    sent = [bytes([65 + i]) * 40 for i in range(5)]
    segment = left_by_a_dead_writer(tmp_path, sent, rows=10)
    flip(segment, 2 * (HEADER + 40) + 6)  # in the third frame's length
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [sent[0], sent[1], sent[3], sent[4]] and spool.torn_frames == 1
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)  # replayed once, then gone
    assert again.adopted == 0 and payloads(again) == [] and segment_files(tmp_path) == []


def test_a_folder_whose_damaged_tail_is_cut_after_its_last_commit_is_gone_after_a_clean_close(tmp_path):
    """Read a frame at a time (the loader's batches end anywhere), the last commit came before
    the damaged tail was cut: the segment then ended at it, the close kept the folder, and the
    next writer replayed every frame again."""
    sent = [bytes([65 + i]) * 40 for i in range(3)]
    segment = left_by_a_dead_writer(tmp_path, sent)
    flip(segment, 2 * (HEADER + 40) + 6)  # the last frame's length
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool, max_rows=1) == sent[:2]
    spool.close()
    assert segment_files(tmp_path) == [] and payloads(Spool(tmp_path, max_bytes=1 << 20)) == []


@pytest.mark.parametrize(
    ("damage", "kept", "said"),
    [
        ("cut 7 bytes off the end", [0, 1, 2], ["torn frame"]),  # a crash mid-write
        ("the last length", [0, 1, 2], ["unreadable frame header"]),  # a crash's zeroed header looks the same
        ("the second length", [0, 2, 3], ["damaged frame header"]),  # good frames after it: the disk
        # Still this release's frames: the last one's damage was read as an earlier release's torn frame.
        ("the first marker, the last length", [1, 2], ["damaged frame header", "unreadable frame header"]),
    ],
)
def test_the_log_line_tells_a_crash_from_damage_as_the_runbook_reads_it(tmp_path, caplog, damage, kept, said):
    """Damage at the end of a folder a dead writer left was called a torn frame (a crash:
    nothing to do), and a damaged first marker made the segment read as an earlier release's."""
    sent = [bytes([65 + i]) * 40 for i in range(4)]
    segment = left_by_a_dead_writer(tmp_path, sent)
    if damage.startswith("cut"):
        with open(segment, "r+b") as handle:
            handle.truncate(os.path.getsize(segment) - 7)
    else:
        places = {"the first marker": 1, "the second length": HEADER + 40 + 6, "the last length": 3 * (HEADER + 40) + 6}
        for part in damage.split(", "):
            flip(segment, places[part])
    assert payloads(Spool(tmp_path, max_bytes=1 << 20)) == [sent[i] for i in kept]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(said) and all(s in line for s, line in zip(said, skipped, strict=True)), skipped


def test_damage_in_our_own_live_folder_is_never_called_a_torn_frame(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for payload in (b"a" * 40, b"b" * 40):
        spool.append(payload, rows=5)
    flip(segment_files(tmp_path)[0], HEADER + 40 + 5)  # the last frame's length, nothing after it
    assert payloads(spool) == [b"a" * 40] and spool.torn_frames == 1
    assert "damaged frame header" in caplog.text and "torn frame" not in caplog.text


def test_a_damaged_frame_length_in_our_own_live_folder_costs_that_frame_only(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    sent = [bytes([65 + i]) * 40 for i in range(5)]
    for payload in sent:
        spool.append(payload, rows=10)
    flip(segment_files(tmp_path)[0], HEADER + 40 + 5)  # the second frame's length
    assert payloads(spool) == [sent[0], *sent[2:]] and spool.torn_frames == 1
    assert spool.append(b"later", rows=1) and payloads(spool) == [b"later"]


def test_a_segment_an_earlier_release_spooled_is_replayed(tmp_path):
    """Frames spooled before headers had their own checksum (an upgrade with rows waiting):
    read as they were written, a corrupt one skipped alone as before."""
    left_by_a_dead_writer(tmp_path, [b"placeholder"])
    (segment,) = segment_files(tmp_path)
    sent = [f"old-{i}".encode() * 10 for i in range(4)]
    segment.write_bytes(b"".join(struct.pack(">III", len(p), zlib.crc32(p), 3) + p for p in sent))
    flip(segment, 2 * (12 + 50) + 12 + 5)  # inside the third frame's payload
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [sent[0], sent[1], sent[3]] and spool.corrupt_rows == 3
    spool.close()
    assert segment_files(tmp_path) == []


def damaged(data: bytes, rng: random.Random, cut: bool) -> tuple[bytes, set[int]]:
    """``data`` with random damage (flipped bytes, a zeroed run, a cut tail if ``cut``) and
    the damaged offsets."""
    out, hit = bytearray(data), set()
    for _ in range(rng.randint(1, 3)):
        kind, at = rng.choice(("flip", "zeros", "cut") if cut else ("flip", "zeros")), rng.randrange(len(out))
        if kind == "flip":
            out[at] ^= 1 << rng.randrange(8)
            hit.add(at)
        elif kind == "zeros":
            end = min(at + rng.randint(1, 600), len(out))
            hit.update(i for i in range(at, end) if out[i])
            out[at:end] = bytes(end - at)
        else:
            hit.update(range(at, len(data)))
            del out[at:]
    return bytes(out), hit


def test_random_damage_costs_only_the_frames_it_touches(tmp_path):
    """A flipped bit, a zeroed block or a cut tail (a crash's: not in our own live folder)
    anywhere in a segment, in a folder left behind or our own live one: every frame whose
    bytes are untouched comes back once, in order, nothing else comes back, and nothing is
    replayed twice."""
    rng = random.Random(20261207)
    for trial in range(300):
        root = tmp_path / str(trial)
        sent = [rng.randbytes(rng.randint(1, 300)) for _ in range(rng.randint(1, 30))]
        own = trial % 2 == 1
        spool = Spool(root, max_bytes=1 << 20)
        if not own:
            left_by_a_dead_writer(root, sent)
        for payload in sent if own else ():
            spool.append(payload, rows=1)
        (segment,) = segment_files(root) if own else [f for f in segment_files(root) if f.parent != spool.own]
        data, hit = damaged(segment.read_bytes(), rng, cut=not own)
        segment.write_bytes(data)
        if not own:
            spool.adopt()
        starts = [0]
        for payload in sent:
            starts.append(starts[-1] + HEADER + len(payload))
        intact = [p for p, a, b in zip(sent, starts[:-1], starts[1:], strict=True) if not hit & set(range(a, b))]
        got = payloads(spool, timeout=0, max_rows=rng.choice((1, 3, 10_000)))  # the loader's batches vary
        assert [p for p in got if p in intact] == intact, f"trial {trial}"
        assert not Counter(got) - Counter(sent), f"trial {trial}"  # nothing foreign, nothing twice
        spool.close()
        assert payloads(Spool(root, max_bytes=1 << 20), timeout=0) == [], f"trial {trial}"


def test_a_folder_with_a_torn_tail_is_replayed_once_and_then_gone(tmp_path):
    """The torn bytes kept its segment on disk: every restart replayed the good frames again
    and counted the torn one again."""
    segment = left_by_a_dead_writer(tmp_path, [f"good-{i}".encode() * 10 for i in range(3)])
    with open(segment, "r+b") as handle:
        handle.truncate(os.path.getsize(segment) - 7)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [f"good-{i}".encode() * 10 for i in range(2)] and spool.torn_frames == 1
    spool.close()
    assert segment_files(tmp_path) == [] and [p for p in tmp_path.iterdir() if p.is_dir()] == []
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.adopted == 0 and payloads(again) == [] and again.torn_frames == 0


def test_a_folder_ending_in_a_corrupt_frame_is_replayed_once_and_then_gone(tmp_path):
    segment = left_by_a_dead_writer(tmp_path, [f"good-{i}".encode() * 10 for i in range(3)])
    flip(segment, -3)  # whole, but failing its checksum, and last
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert payloads(spool) == [f"good-{i}".encode() * 10 for i in range(2)] and spool.torn_frames == 1
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.adopted == 0 and payloads(again) == [] and again.torn_frames == 0 and segment_files(tmp_path) == []


def test_our_own_folder_ending_in_a_corrupt_frame_is_gone_after_a_clean_close(tmp_path):
    """A bad block in our own tail: the frames before it were committed and its rows counted
    dropped, but the clean close kept the folder, and the next writer replayed it and counted
    the same rows dropped again (ChurnInferenceLogDropping again at every restart)."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    sent = [f"good-{i}".encode() * 10 for i in range(3)]
    for payload in sent:
        spool.append(payload, rows=10)
    flip(segment_files(tmp_path)[0], -3)  # the last frame: whole, failing its checksum
    frames = spool.read(100, timeout=0.05)
    assert [f.payload for f in frames] == sent[:2]
    spool.ack(frames)
    assert spool.corrupt_rows == 10
    spool.close()
    assert segment_files(tmp_path) == [] and [p for p in tmp_path.iterdir() if p.is_dir()] == []
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.adopted == 0 and payloads(again) == [] and again.corrupt_rows == 0


def test_a_read_of_corrupt_frames_alone_counts_them_done_only_once_earlier_reads_are_committed(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first" * 10, rows=1)
    frames = spool.read(100, timeout=0.05)  # read, not committed yet (the database is away)
    spool.append(b"second" * 10, rows=1)
    flip(segment_files(tmp_path)[0], -3)
    assert spool.read(100, timeout=0.05) == []  # the corrupt one, skipped
    spool.close()  # "first" was never committed: kept for the next writer
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [f.payload for f in frames] == [b"first" * 10] and payloads(again) == [b"first" * 10]


def test_committing_part_of_a_read_keeps_the_rest_for_the_next_writer(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for payload in (b"one" * 10, b"two" * 10):
        spool.append(payload, rows=1)
    frames = spool.read(100, timeout=0.05)
    spool.ack(frames[:1])  # "two" is not committed
    spool.close()
    # Kept (the tail segment replays its committed frame too: the log's unique id stores it once).
    assert payloads(Spool(tmp_path, max_bytes=1 << 20))[-1:] == [b"two" * 10]
