"""The inference log's disk spool: scored rows wait here, in order, until the database has them.

Like the disk buffers of Fluent Bit or Vector: the writer process appends every frame it
receives to a segment file before it tries the database, so an outage, a slow database or
a crash of the API costs no row. A frame is a header (a marker, the payload's length, its
rows, its crc32, and the header's own crc32) then its MessagePack payload; segments roll
over at ``segment_bytes`` and a segment is deleted once every frame in it is committed. A
torn last frame (power loss, SIGKILL mid-write) fails its length or checksum check: it is
skipped and counted, never a crash. A damaged header costs its own frame only: reading
goes on at the next marker whose header checks, so a bad block never takes the frames
after it (an earlier release's frames, read as before, had no such resynchronisation).

Each writer owns one directory under the spool root, held by an ``flock``; a writer that
starts finds directories no live process holds (left by a killed API) and adopts them, so
their rows are replayed first, and looks again every so often for directories left since
(a writer that outlived its API worker). Only past ``max_bytes`` on disk are rows refused.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)
#: Read errors that are the medium's, not the moment's: a bad block answers every read so.
_BAD_BLOCK = frozenset({errno.EIO, errno.EBADMSG, errno.ENXIO})

# A marker, the payload's length, its rows, its crc32, then the crc32 of those 16 bytes. Read as
# an earlier release's header (below) the marker is a length over 2 GiB, which no single
# write() makes (Linux writes at most 0x7ffff000 bytes a call): the two are never confused.
_MAGIC = b"\xc1SPL"
_FIELDS = struct.Struct(">4sIII")
_HEADER_BYTES = _FIELDS.size + 4
_V1_HEADER = struct.Struct(">III")  # an earlier release's: payload length, crc32 of the payload, rows
#: The frame format, in the name of the folder a database's spool lives in: a release that
#: reads frames as ``_V1_HEADER`` (and would cut these off as torn) never looks there.
FORMAT = "f2"
_LOCK = "owner.lock"
_SUFFIX = ".seg"


def _header(length: int, rows: int, crc: int) -> bytes:
    fields = _FIELDS.pack(_MAGIC, length, rows, crc)
    return fields + zlib.crc32(fields).to_bytes(4, "big")


def _checked_header(data: bytes) -> tuple[int, int, int] | None:
    """``(length, rows, crc32 of the payload)`` of a header that passes its own checksum."""
    if len(data) < _HEADER_BYTES or not data.startswith(_MAGIC):
        return None
    if zlib.crc32(data[: _FIELDS.size]) != int.from_bytes(data[_FIELDS.size : _HEADER_BYTES], "big"):
        return None
    _, length, rows, crc = _FIELDS.unpack_from(data)
    return (length, rows, crc) if length else None


def _next_header(data: bytes) -> int | None:
    """Where in ``data`` the first header that passes its checksum begins."""
    at = data.find(_MAGIC)
    while at >= 0:
        if _checked_header(data[at : at + _HEADER_BYTES]) is not None:
            return at
        at = data.find(_MAGIC, at + 1)
    return None


def _earlier_release(handle: BinaryIO) -> bool:
    """Whether a segment holds an earlier release's frames: no marker begins it, nor any
    header that checks (one whose first marker alone is damaged is this release's)."""
    handle.seek(0)
    if handle.read(len(_MAGIC)) == _MAGIC:
        return False
    handle.seek(0)
    return _next_header(handle.read()) is None


@dataclass(frozen=True)
class Frame:
    """One spooled frame: where it ends, so its segment can go once it is committed."""

    directory: Path
    segment: int
    end: int
    rows: int
    payload: bytes


class _Directory:
    """A spool directory this process holds the lock of."""

    def __init__(self, path: Path, lock_fd: int, adopted: bool) -> None:
        self.path, self.lock_fd, self.adopted = path, lock_fd, adopted

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.path.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def segment_path(self, number: int) -> Path:
        return self.path / f"{number:012d}{_SUFFIX}"


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # removed by the writer that just emptied it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def move_unheld(source: Path, target: Path) -> int:
    """Move the writer directories under ``source`` that no live process holds into ``target``
    (where a ``Spool`` adopts them); returns how many."""
    moved = 0
    for candidate in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            fd = _try_lock(candidate)
        except OSError:
            continue
        if fd is None:  # a live writer's
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            candidate.rename(target / candidate.name)
            moved += 1
        except OSError as exc:
            log.warning("inference log spool: cannot move %s into %s (%s)", candidate, target, exc.strerror)
        finally:
            os.close(fd)
    try:
        source.rmdir()
    except OSError:  # something is left in it
        pass
    return moved


class Spool:
    """Append frames at the tail, read them from the head, delete what is committed.

    One thread appends (the writer's receiver), one reads and acknowledges (its loader).
    """

    def __init__(self, root: Path, *, max_bytes: int, segment_bytes: int = 8 << 20) -> None:
        """Appends are not synced here: the writer calls ``sync`` every flush interval."""
        self.root, self.max_bytes = root, max_bytes
        # The tail segment stays on disk, committed or not, until it rolls: at most an eighth of
        # the cap, or a small cap filled with committed rows would refuse every append for good.
        self.segment_bytes = min(segment_bytes, max(max_bytes // 8, 1))
        self._unsynced = False  # appended since the last fsync
        self._unlockable: set[Path] = set()
        self._oversized: set[Path] = set()
        root.mkdir(parents=True, exist_ok=True)
        # Made under a hidden name and locked before it gets its own: a writer starting at the
        # same moment (another API worker) could otherwise lock it first and adopt it.
        name = uuid.uuid4().hex
        hidden = root / f".{name}"
        hidden.mkdir()
        fd = _try_lock(hidden)
        assert fd is not None
        own = hidden.rename(root / name)
        self._own = _Directory(own, fd, adopted=False)
        self._dirs: list[_Directory] = [self._own]
        self.bytes = 0
        self.torn_frames = 0
        #: Rows of whole frames that failed their checksum (a torn frame's were never reported
        #: spooled: the API counted them dropped when its writer died).
        self.corrupt_rows = 0
        #: Whether the last refused append was the disk's doing (full, read-only), not the cap's.
        self.disk_refused = False
        self._cond = threading.Condition()
        self._tail_segment = 0
        self._tail: int | None = None  # fd of the segment being appended to
        self._tail_size = 0
        self._abandoned: dict[int, int] = {}  # our segments left with uncut junk: where their frames end
        self._published = (0, 0)  # (segment, end offset) the reader may read up to in our own dir
        self._reader: tuple[_Directory, int, int] | None = None  # (dir, segment, offset) of the next frame
        self._resume: tuple[_Directory, int, int] | None = None  # where in our own dir to go on after an adoption
        self._acked = (0, 0)  # (segment, end) of the last committed frame in our own directory
        self._committed: dict[Path, tuple[int, int]] = {}  # the same in each adopted one
        self._format_of: tuple[Path, bool] | None = None  # a segment, and whether an earlier release wrote it
        self._unacked: Frame | None = None  # the last frame of the last read, until it is committed
        self._closed = False
        self._sealed = False  # no more appends: a reader that caught up stops waiting
        # What earlier processes left, up to the cap: taking every folder made one writer of a
        # restarted multi-worker API hold several caps' worth and refuse every new row.
        self.adopted_bytes = self.adopt()

    def _unheld(self, held: set[Path]) -> list[_Directory]:
        """The directories under the root, other than ``held``, that no live writer holds (now locked by us)."""
        found = []
        for candidate in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if candidate in held:
                continue
            try:
                fd = _try_lock(candidate)
            except OSError as exc:  # another user's folder, a read-only mount: not ours to replay, never a crash
                if candidate not in self._unlockable:  # said once, not at every look
                    self._unlockable.add(candidate)
                    log.warning("inference log spool: %s is not replayed: cannot lock it (%s)", candidate, exc.strerror)
                continue
            if fd is not None:  # no live writer holds it: a previous process's rows
                found.append(_Directory(candidate, fd, adopted=True))
        return found

    def adopt(self) -> int:
        """Take over the directories a writer left since this one started (one that outlived its
        API worker and exited with the database away); their frames are read next, before the
        rest of our own. Only folders that fit under the cap with what we hold are taken: our own
        live rows come first. Returns their bytes. Only the reading thread calls this, between
        acknowledging one read and starting the next."""
        found: list[_Directory] = []
        size = 0
        for directory in self._unheld({d.path for d in self._dirs}):
            try:
                more = self._dir_bytes(directory)
            except OSError:  # cannot even size it: leave it where it is
                os.close(directory.lock_fd)
                continue
            with self._cond:  # what does not fit under the cap waits for room (or another writer)
                # Our tail segment stays on disk until it rolls: its committed frames leave room.
                committed = self._acked[1] if self._acked[0] == self._tail_segment else 0
                fits = self.bytes - committed + more <= self.max_bytes
                if fits:
                    self.bytes += more
            if fits:
                found.append(directory)
                size += more
                continue
            os.close(directory.lock_fd)
            if more > self.max_bytes and directory.path not in self._oversized:  # no writer ever takes it
                self._oversized.add(directory.path)
                log.warning("inference log spool: %s (%d bytes) is larger than the cap, %d bytes (a writer with a "
                            "larger CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES left it): raise the cap to replay it",
                            directory.path, more, self.max_bytes)  # fmt: skip
        if not found:
            return 0
        self._dirs[-1:-1] = found  # older rows than ours: before our own directory, which stays last
        if self._reader is not None and self._reader[0] is self._own:
            self._resume, self._reader = self._reader, (found[0], self._first_segment(found[0]), 0)
        return size

    @staticmethod
    def _dir_bytes(directory: _Directory) -> int:
        return sum(directory.segment_path(n).stat().st_size for n in directory.segments())

    # ---------------------------------------------------------------- appending

    def append(self, payload: bytes, rows: int) -> bool:
        """Write one frame at the tail; False (nothing written) when the spool is at its cap
        or the disk refuses (full, read-only): the writer counts those rows as dropped."""
        frame = _header(len(payload), rows, zlib.crc32(payload)) + payload
        with self._cond:
            self.disk_refused = False
            # As adopt() counts: our tail's committed frames stay on disk until it rolls, and leave
            # room. Counted here only, a folder taken over beside them refused our live rows.
            committed = self._acked[1] if self._acked[0] == self._tail_segment else 0
            if self.bytes - committed + len(frame) > self.max_bytes:
                return False
            try:
                if self._tail is None or self._tail_size + len(frame) > self.segment_bytes and self._tail_size:
                    self._roll()
                assert self._tail is not None
                written = os.write(self._tail, frame)  # one write per frame: a crash tears at most the last one
            except OSError as exc:
                log.error("inference log spool: cannot write to %s (%s)", self._own.path, exc.strerror)
                written = -1
            if written != len(frame):  # a short or failed write: cut it off, so later frames stay readable
                self.disk_refused = True
                if written >= 0:
                    log.error("inference log spool: cannot write to %s (%d of %d bytes written: the volume is full?)",
                              self._own.path, written, len(frame))  # fmt: skip
                if self._tail is not None and written:
                    try:
                        os.ftruncate(self._tail, self._tail_size)
                    except OSError:  # the junk stays: later frames go to a new segment, not after it
                        self._abandoned[self._tail_segment] = self._tail_size
                        tail, self._tail = self._tail, None
                        try:
                            self.bytes += max(os.fstat(tail).st_size - self._tail_size, 0)  # on disk until deleted
                            os.fsync(tail)  # the frames before it keep the flush interval's promise
                        except OSError:
                            pass
                        os.close(tail)
                return False
            self._tail_size += len(frame)
            self._unsynced = True
            self.bytes += len(frame)
            self._published = (self._tail_segment, self._tail_size)
            self._cond.notify_all()
        return True

    def _roll(self) -> None:
        if self._tail is not None:
            os.fsync(self._tail)
            tail, self._tail = self._tail, None  # never a closed descriptor held, whatever fails next
            os.close(tail)
        # The segment number moves only once its file is open: a failed open is retried at the next append.
        path = self._own.segment_path(self._tail_segment + 1)
        self._tail = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._tail_segment += 1
        self._tail_size = 0

    def seal(self) -> None:
        """No frame will be appended any more: a reader that has caught up returns at once
        rather than waiting out its timeout (a writer with a long flush interval shutting down)."""
        with self._cond:
            self._sealed = True
            self._cond.notify_all()

    def sync(self) -> None:
        """Make what was appended survive a power cut (the writer calls this every flush interval)."""
        with self._cond:
            self._sync()

    def _sync(self) -> None:
        if self._tail is not None and self._unsynced:
            try:
                os.fsync(self._tail)
            except OSError as exc:  # Linux may drop the unwritten pages: say so, once per interval
                log.error("inference log spool: cannot sync %s (%s): spooled rows may not survive a power cut",
                          self._own.path, exc.strerror)  # fmt: skip
        self._unsynced = False

    # ---------------------------------------------------------------- reading

    def read(self, max_rows: int, timeout: float) -> list[Frame]:
        """The next frames in order, up to ``max_rows`` rows (at least one frame if any);
        waits up to ``timeout`` for one. Adopted directories come first."""
        frames: list[Frame] = []
        rows = 0
        start = self._reader, self._resume
        try:
            for frame in self._frames(timeout):
                frames.append(frame)
                rows += frame.rows
                if rows >= max_rows:
                    break
        except OSError:  # a disk error half-way: the next read starts again at these frames
            self._reader, self._resume = start
            raise
        if frames:
            self._unacked = frames[-1]
        elif self._unacked is None:
            self._skipped_done()
            self._release_committed()
        return frames

    def _skipped_done(self) -> None:
        """Corrupt frames skipped after the last committed one in our own directory count as
        done (their rows are counted dropped): kept, a clean close left the folder, and the
        next writer counted the same rows dropped again."""
        if self._reader is not None and self._reader[0] is self._own:
            with self._cond:
                self._acked = max(self._acked, self._reader[1:])

    def _release_committed(self) -> None:
        """Let go of the adopted folders whose every frame is committed: a corrupt tail cut off
        after the last commit leaves the segment ending at it, which ``ack`` never saw (kept, a
        clean close left the folder, and the next writer replayed its frames again)."""
        reading = None if self._closed or self._reader is None else self._reader[0]
        for directory in [d for d in self._dirs if d.adopted and d is not reading]:
            committed = self._committed.get(directory.path)
            if committed is None or directory.segments() != [committed[0]]:
                continue
            path = directory.segment_path(committed[0])
            if path.stat().st_size <= committed[1]:
                self._delete(path)
                self._release(directory)

    def _frames(self, timeout: float) -> Iterator[Frame]:
        if self._reader is None:
            self._reader = (self._dirs[0], *(self._first_segment(self._dirs[0]), 0))
        waited = False
        while True:
            directory, segment, offset = self._reader
            own = directory is self._own
            if own:
                with self._cond:
                    if (segment, offset) >= self._published:
                        if waited or self._closed or self._sealed:
                            return
                        self._cond.wait(timeout)
                        waited = True
                        continue
                    # The published end, not the tail's size: a roll whose first write failed has
                    # moved the tail to an empty segment while this one is still being read.
                    # A segment left with uncut junk after its last frame ends where that frame did.
                    limit = self._published[1] if segment == self._published[0] else self._abandoned.get(segment)
            else:
                limit = None
            frame = None if limit is not None and offset >= limit else self._read_one(directory, segment, offset, limit)
            if frame is None:  # end of this segment (or a torn tail): move on
                nxt = self._next_position(directory, segment)
                if nxt is None:
                    return
                self._reader = nxt
                if nxt[0] is not directory and waited:
                    return  # one read never mixes frames of two directories
                continue
            self._reader = (directory, segment, frame.end)
            yield frame
            waited = True  # after one frame, take only what is already there

    def _first_segment(self, directory: _Directory) -> int:
        segments = directory.segments()
        return segments[0] if segments else 1

    def _next_position(self, directory: _Directory, segment: int) -> tuple[_Directory, int, int] | None:
        later = [n for n in directory.segments() if n > segment]
        if later:
            return directory, later[0], 0
        if directory is self._own:
            return None  # the tail segment: wait for more
        index = self._dirs.index(directory)
        following = self._dirs[index + 1]
        if following is self._own and self._resume is not None:  # back where an adoption interrupted us
            resume, self._resume = self._resume, None
            return resume
        return following, self._first_segment(following), 0

    def _read_one(self, directory: _Directory, segment: int, offset: int, limit: int | None) -> Frame | None:
        """The frame at ``offset`` or after it; None at the end of the segment. A whole frame
        that fails its checksum (a bad block) is skipped alone: the frames after it are intact.
        So is a damaged header: reading goes on at the next header that checks. A frame cut
        short (a torn tail), or damage with no good header after it, ends the segment; in a
        folder a dead writer left it is cut off, so the segment goes once the frames before it
        are committed (kept, it was replayed, and counted torn, at every restart)."""
        path = directory.segment_path(segment)
        corrupt_from: int | None = None  # where a run of skipped frames began
        while limit is None or offset < limit:  # never past what the appender published
            good: int | None = None  # after a damaged header: how far on the next good one begins
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    header = handle.read(_HEADER_BYTES)
                    if not header:
                        break
                    checked = _checked_header(header)
                    if checked is not None:
                        length, rows, crc = checked
                        size = _HEADER_BYTES
                    elif len(header) >= _V1_HEADER.size and self._earlier_release(path, handle):
                        length, crc, rows = _V1_HEADER.unpack_from(header)
                        size = _V1_HEADER.size
                    else:
                        length = rows = crc = size = 0
                    handle.seek(offset + size)
                    # Never more than the file holds: a damaged length could ask for 4 GiB.
                    payload = handle.read(max(min(length, os.fstat(handle.fileno()).st_size - offset - size), 0))
                    end = offset + size + length
                    # A zero length is never written: zeroed blocks after a crash would pass the checksum.
                    whole = length > 0 and len(payload) == length and (limit is None or end <= limit)
                    if checked is None and not (whole and zlib.crc32(payload) == crc):
                        handle.seek(offset + 1)  # a damaged header: is there a good one after it?
                        found = _next_header(handle.read(-1 if limit is None else limit - offset - 1))
                        good = None if found is None else found + 1
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno not in _BAD_BLOCK:  # passing (too many open files, no memory): read() retries
                    raise
                # A bad block the disk reports: the same read fails every time. Retried, it stopped
                # all loading for good, live rows included (they waited behind it until the cap).
                # Its frames count as damaged, as a checksum's failure would; reading goes on
                # after them, and the file goes with the commits after it.
                self.torn_frames += 1
                log.error("inference log spool: cannot read %s at byte %d (%s): the rest of that segment skipped",
                          path, offset, exc.strerror or exc)  # fmt: skip
                if limit is not None:  # ours: the next frame begins at the published end
                    self._reader = (directory, segment, limit)
                return None
            if whole and zlib.crc32(payload) == crc:
                return Frame(directory.path, segment, end, rows, payload)
            self.torn_frames += 1
            if good is not None:
                log.warning("inference log spool: damaged frame header in %s at byte %d: %d bytes skipped",
                            path, offset, good)  # fmt: skip
                corrupt_from = offset if corrupt_from is None else corrupt_from
                offset += good
                self._reader = (directory, segment, offset)
                continue
            if not whole:
                if limit is not None:  # never a crash's: nothing published in our own folder is cut short
                    log.warning("inference log spool: damaged frame header in %s at byte %d, no good one after it: "
                                "the rest of the published frames skipped", path, offset)  # fmt: skip
                elif checked is not None or len(header) < _HEADER_BYTES:
                    log.warning("inference log spool: torn frame in %s at byte %d skipped (cut short by the end of "
                                "the file: a crash mid-write)", path, offset)  # fmt: skip
                else:  # a crash's half-written or zeroed header looks like a damaged one: say both
                    log.warning("inference log spool: unreadable frame header in %s at byte %d, nothing readable "
                                "after it: skipped (a crash mid-write, or damage)", path, offset)  # fmt: skip
                if limit is not None:  # ours: the next frame begins at the published end, not the file's
                    self._reader = (directory, segment, limit)
                    return None
                start = offset if corrupt_from is None else corrupt_from  # the frames skipped before it go too
                self._reader = (directory, segment, self._cut(directory, path, start))
                return None
            log.warning("inference log spool: corrupt frame of %d rows in %s at byte %d skipped", rows, path, offset)
            if checked is not None or rows <= length:  # rows to be trusted: reported spooled, and lost
                self.corrupt_rows += rows
            corrupt_from = offset if corrupt_from is None else corrupt_from
            offset = end
            self._reader = (directory, segment, end)
        if corrupt_from is not None and limit is None:  # corrupt frames to the end of the file: cut them off too
            self._reader = (directory, segment, self._cut(directory, path, corrupt_from))
        return None

    def _earlier_release(self, path: Path, handle: BinaryIO) -> bool:
        """``_earlier_release`` of the segment being read, worked out once: every header of an
        earlier release's segment fails the check, and each look reads the whole file."""
        if self._format_of is None or self._format_of[0] != path:
            self._format_of = (path, _earlier_release(handle))
        return self._format_of[1]

    def _cut(self, directory: _Directory, path: Path, offset: int) -> int:
        """Where reading of ``path`` goes on after a torn frame at ``offset``: its end. In an
        adopted folder the torn bytes are removed (the whole file when nothing precedes them)."""
        size = path.stat().st_size
        if not directory.adopted:  # ours: the appender may still write after it
            return size
        try:
            if offset == 0:
                path.unlink()
            else:
                os.truncate(path, offset)
        except OSError:  # a read-only mount: skipped all the same, and kept
            return size
        with self._cond:
            self.bytes -= size - offset
        return offset

    # ---------------------------------------------------------------- acknowledging

    def ack(self, frames: list[Frame]) -> None:
        """The frames are committed: delete every segment read to its end before the last of them."""
        if not frames:
            return
        last = frames[-1]
        whole = last is self._unacked  # the whole last read: what it skipped after its frames is done too
        if whole:
            self._unacked = None
        if last.directory == self._own.path:
            self._acked = (last.segment, last.end)
            if whole:
                self._skipped_done()
        else:
            self._committed[last.directory] = (last.segment, last.end)
        for directory in list(self._dirs):
            for number in directory.segments():
                path = directory.segment_path(number)
                if directory.path == last.directory and number >= last.segment:
                    is_tail = directory is self._own and number == self._tail_segment
                    ends = self._abandoned.get(number) if directory is self._own else None
                    ends = path.stat().st_size if ends is None else ends
                    if number == last.segment and not is_tail and last.end >= ends:
                        self._delete(path)
                    return
                self._delete(path)
            if directory.adopted:  # read to its end before the last committed frame
                self._release(directory)

    def _delete(self, path: Path) -> None:
        if path.parent == self._own.path:
            self._abandoned.pop(int(path.stem), None)
        size = path.stat().st_size
        path.unlink()
        with self._cond:
            self.bytes -= size

    def _release(self, directory: _Directory) -> None:
        """Remove a directory whose frames are all committed."""
        self._dirs.remove(directory)
        self._committed.pop(directory.path, None)
        (directory.path / _LOCK).unlink(missing_ok=True)
        os.close(directory.lock_fd)
        try:
            directory.path.rmdir()
        except OSError:
            pass

    @property
    def own(self) -> Path:
        """This writer's directory (frames from any other were spooled by an earlier process)."""
        return self._own.path

    @property
    def adopted(self) -> int:
        """Spool directories left by earlier processes that are still being replayed."""
        return sum(1 for d in self._dirs if d.adopted)

    def close(self) -> None:
        """Stop waiting readers and let go of the directories. Uncommitted frames stay on disk
        for the next writer to replay; a spool with nothing left is removed."""
        with self._cond:
            self._closed = True
            if self._tail is not None:
                os.fsync(self._tail)
                os.close(self._tail)
                self._tail = None
            self._cond.notify_all()
        # A folder taken over and replayed to its end is let go of at the next commit of ours;
        # with none since (an idle writer), let go of it now, or our own committed rows would stay.
        self._release_committed()
        for directory in [d for d in self._dirs if d.adopted and not d.segments()]:
            self._release(directory)
        with self._cond:
            everything_committed = len(self._dirs) == 1 and self._acked >= self._published
        if everything_committed:
            for number in self._own.segments():
                self._own.segment_path(number).unlink()
            self._release(self._own)
        self.release()

    def release(self) -> None:
        """Drop the locks (as a process's death would); the files stay."""
        for directory in self._dirs:
            try:
                os.close(directory.lock_fd)
            except OSError:
                pass
        self._dirs = []
