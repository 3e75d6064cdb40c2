"""Paths -> checked text: what every loader reads, before any format is known.

A path must be a regular file (a named pipe would block a reader forever, a link loop is named
as one), UTF-8 text (UTF-16 and UTF-32 are recognised and named), not empty. Large files are
read line by line from a `FilePosition`, so an interrupted ingest resumes where it stopped;
directories expand to the files of known types under them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rag.errors import InputError

LISTING_SUFFIXES = frozenset({".txt", ".md"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
CSV_SUFFIXES = frozenset({".csv", ".tsv"})
KNOWN_SUFFIXES = LISTING_SUFFIXES | JSONL_SUFFIXES | CSV_SUFFIXES
BINARY_SNIFF_BYTES = 8192
FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_file(path: Path) -> None:
    """An `InputError` naming `path` unless it is a regular file that can be opened: a missing
    file, a broken or looping symbolic link, a directory, a named pipe (which would block a
    reader forever) or a device each say what they are."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop so
            raise InputError(f"{path}: symbolic link loop (it leads back to itself)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"{path}: symbolic link loop (it leads back to itself)") from None
            raise InputError(f"{path}: broken symbolic link to {os.readlink(path)}") from None
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in FILE_KINDS if test(mode)), "a special file")
    raise InputError(f"{path}: {kind}, not a regular file")


def sniff(path: Path, head: bytes) -> None:
    """An `InputError` when the first bytes of a file show it is not UTF-8 text: the
    byte-order mark or the zero bytes of UTF-16 or UTF-32 text are named as such."""
    for mark, name in UNICODE_MARKS:
        if head.startswith(mark):
            raise InputError(f"{path}: {name} text (byte-order mark); convert it to UTF-8")
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        for zeros, text, order in ((odd, even, "little"), (even, odd, "big")):
            if _looks_like_utf16(zeros, text):
                raise InputError(
                    f"{path}: looks like UTF-16 text ({order}-endian); convert it to UTF-8"
                )
        raise InputError(f"{path}: looks like a binary file, expected text")


def _looks_like_utf16(zeros: bytes, text: bytes) -> bool:
    """Mostly zero bytes on one side, printable ASCII on the other: Latin text in UTF-16."""
    if len(zeros) < 4 or zeros.count(0) < 0.8 * len(zeros):
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in text)
    return printable >= 0.9 * len(text)


UNICODE_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def read_text(path: Path) -> str:
    """The text of a file, or an `InputError` that names the file and what is wrong with it."""
    check_file(path)
    data = path.read_bytes()
    sniff(path, data[:BINARY_SNIFF_BYTES])
    if not data.strip():
        raise InputError(f"{path}: file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x}); "
            "convert the file to UTF-8"
        ) from None


def expand_paths(paths: Iterable[Path], problems: list[str] | None = None) -> list[Path]:
    """Files named directly, plus the known-type files found under named directories. A
    directory holding none is an `InputError`, or, given `problems`, a message added there
    while the other paths are still expanded."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in KNOWN_SUFFIXES)
            if not found:
                message = f"{path}: directory holds no .txt, .jsonl or .csv files"
                if problems is None:
                    raise InputError(message)
                problems.append(message)
            files.extend(found)
        else:
            files.append(path)
    return files


@dataclass
class FilePosition:
    """A place in a file: the byte offset after line `line`. `stream_lines` starts there and
    moves it past each line it has yielded, once the line's records have been taken."""

    offset: int = 0
    line: int = 0


def stream_lines(path: Path, position: FilePosition | None = None) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text file (line ends kept), read as they are needed.

    The same checks as `read_text`: a missing, binary or empty file, or a line that is not
    UTF-8, is an `InputError` naming the file (and the line).
    """
    check_file(path)
    position = position or FilePosition()
    with path.open("rb") as handle:
        sniff(path, handle.read(BINARY_SNIFF_BYTES))
        handle.seek(position.offset)
        content = position.offset > 0
        offset = position.offset
        for number, raw in enumerate(iter(handle.readline, b""), start=position.line + 1):
            offset += len(raw)
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{number}: not UTF-8 text (invalid byte 0x{raw[exc.start]:02x}); "
                    "convert the file to UTF-8"
                ) from None
            content = content or bool(line.strip())
            yield number, line
            position.offset, position.line = offset, number  # the line's records are taken
        if not content:
            raise InputError(f"{path}: file is empty")
